//go:build !faultinject

// Package faultinject lets the fault tests kill the driver at a chosen step
// of a publish. Only binaries built with -tags faultinject honour it; in a
// normal build Point does nothing and reads no environment.
package faultinject

// Point marks a step; see the faultinject build for what it can do.
func Point(string) {}
