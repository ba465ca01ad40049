package main

import "testing"

func TestVerdicts(t *testing.T) {
	tests := []struct {
		name              string
		point, lo, hi     float64
		atLeast, atMostOf string
	}{
		{"all above 1", 1.02, 1.01, 1.05, "met", "**missed**"},
		{"point above, interval straddles", 1.01, 0.95, 1.04, "met (the interval crosses the goal)", "**missed** (the interval crosses the goal)"},
		{"point below, interval straddles", 0.99, 0.95, 1.04, "**missed** (the interval crosses the goal)", "met (the interval crosses the goal)"},
		{"all below 1", 0.90, 0.85, 0.95, "**missed**", "met"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := verdictAtLeast(tc.point, tc.lo, tc.hi, 1); got != tc.atLeast {
				t.Errorf("verdictAtLeast(%v, %v–%v, ≥ 1) = %q, want %q", tc.point, tc.lo, tc.hi, got, tc.atLeast)
			}
			if got := verdictAtMost(tc.point, tc.lo, tc.hi, 1); got != tc.atMostOf {
				t.Errorf("verdictAtMost(%v, %v–%v, ≤ 1) = %q, want %q", tc.point, tc.lo, tc.hi, got, tc.atMostOf)
			}
		})
	}
}
