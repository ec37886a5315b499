package charmapi

import "net/url"

// Names and paths: a Charm server keeps a file under its request path as
// sent, escaped: a POST of /v1/fs/sp%20ace is stored, and listed, as
// "sp%20ace". The proxy places keys by the unescaped path ("sp ace"), and a
// URL built from a path escapes it on the way out. A listed name used as a
// path unchanged is therefore escaped twice ("sp%2520ace"): a different
// file, placed under a different key. Names read from a listing go through
// FromListing first (List and DecodeListing do).

// FromListing returns the path a listed name stands for: the path whose
// request the node stored under that name. It is false for a name no
// request by path can address, one its path does not escape back to (such
// as "a%2Fb", stored from a request that escaped a slash): callers leave
// such files alone rather than act on another file.
func FromListing(name string) (string, bool) {
	p, err := url.PathUnescape(name)
	if err != nil || Escape(p) != name {
		return "", false
	}
	return p, true
}

// Escape is a path as a request URL carries it, and so as a node stores it.
func Escape(p string) string {
	return (&url.URL{Path: p}).EscapedPath()
}
