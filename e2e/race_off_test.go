//go:build !race

package e2e

// raceEnabled: the race detector is on (it makes goroutine stacks larger).
const raceEnabled = false
