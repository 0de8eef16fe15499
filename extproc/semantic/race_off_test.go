//go:build !race

package semantic

// raceEnabled is true under -race, where the encoder runs ten times slower
// and the quality sweeps are skipped (see runSweeps).
const raceEnabled = false
