//go:build !unix

package devcluster

import "math/rand/v2"

// portBlock is the whole range where processes can't lock a block.
func portBlock() (base, size int) { return portBase, portSpan }

// portCursor is a random offset where it can't be kept in turn.
func portCursor(_, size, _ int) int { return rand.IntN(size) }
