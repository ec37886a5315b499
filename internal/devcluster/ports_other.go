//go:build !unix

package devcluster

// portBlock is the whole range where processes can't lock a block.
func portBlock() (base, size int) { return portBase, portSpan }
