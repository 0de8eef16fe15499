//go:build race

package semantic

// raceEnabled is true under -race, where the encoder runs ten times slower.
const raceEnabled = true
