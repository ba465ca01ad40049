package integration

import (
	"slices"
	"testing"
)

// TestRatioInterval checks the bootstrap interval the benchmarks report
// beside a ratio: it holds the point ratio, it covers 1 for two samples from
// the same spread, and it excludes 1 when one side is clearly faster.
func TestRatioInterval(t *testing.T) {
	spread := []float64{1184, 1190, 1443, 1340, 1459, 1548, 1380, 1248, 1277, 1285, 1279, 1279, 1391, 1454, 1344, 1279}
	scaled := func(f float64) []float64 {
		out := make([]float64, len(spread))
		for i, x := range spread {
			out[i] = x * f
		}
		return out
	}
	tests := []struct {
		name     string
		num, den []float64
		covers1  bool
	}{
		{"same sample", spread, spread, true},
		{"same spread, reversed order", spread, []float64{1279, 1344, 1454, 1391, 1279, 1279, 1285, 1277, 1248, 1380, 1548, 1459, 1340, 1443, 1190, 1184}, true},
		{"numerator 30 % faster", scaled(1.3), spread, false},
		{"numerator 30 % slower", scaled(0.7), spread, false},
		{"one run each", []float64{2}, []float64{1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lo, hi := ratioInterval(tc.num, tc.den)
			point := medianOf(tc.num) / medianOf(tc.den)
			if lo > hi {
				t.Fatalf("interval [%v, %v] is reversed", lo, hi)
			}
			if point < lo || point > hi {
				t.Errorf("point ratio %v outside [%v, %v]", point, lo, hi)
			}
			if got := lo <= 1 && 1 <= hi; got != tc.covers1 {
				t.Errorf("[%v, %v] covers 1 = %v, want %v", lo, hi, got, tc.covers1)
			}
		})
	}
}

func TestMedianInterval(t *testing.T) {
	tests := []struct {
		name   string
		groups [][]float64
		lo, hi float64 // bounds the interval must lie within
	}{
		{"constant", [][]float64{{1, 1}, {1, 1}}, 1, 1},
		{"one group", [][]float64{{0.98, 1.0, 1.02}}, 1.0, 1.0},
		{"spread around 1", [][]float64{{0.97, 0.99}, {1.0, 1.01}, {1.03, 0.98}, {1.02, 1.0}}, 0.97, 1.03},
		// Two groups far apart: resampling whole groups must reach both
		// ends, where resampling single values would stay near the middle.
		{"groups apart", [][]float64{{0.9, 0.9, 0.9, 0.9}, {1.1, 1.1, 1.1, 1.1}}, 0.9, 1.1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lo, hi := medianInterval(tc.groups)
			m := medianOf(slices.Concat(tc.groups...))
			if lo > m || hi < m {
				t.Errorf("median %v outside [%v, %v]", m, lo, hi)
			}
			if lo < tc.lo || hi > tc.hi {
				t.Errorf("[%v, %v] not within [%v, %v]", lo, hi, tc.lo, tc.hi)
			}
			if tc.name == "groups apart" && (lo != 0.9 || hi != 1.1) {
				t.Errorf("[%v, %v], want [0.9, 1.1]: whole groups were not resampled", lo, hi)
			}
		})
	}
}
