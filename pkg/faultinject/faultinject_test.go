//go:build !faultinject

package faultinject

import "testing"

// In the normal build a point is inert whatever the environment says.
func TestPointIsInertWithoutTag(t *testing.T) {
	t.Setenv("MFCP_FAULT_KILL_AT", "step")
	Point("step")
}
