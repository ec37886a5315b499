package proxy

// Healer learns what the proxy saw go wrong, so it can be repaired later
// (hinted handoff and read repair).
type Healer interface {
	RecordUser(user string)
	// Missed: node (by name) did not get the latest write or delete of path.
	Missed(user, path, node string)
	// Suspect: replicas of path disagree; check it soon.
	Suspect(user, path string)
	// Owed: node has not yet been given the latest write or delete of path
	// (its copy may be stale): reads skip it.
	Owed(user, path, node string) bool
	// Complete: node is owed nothing of user's (no pending hints), and the
	// healer is on to know it.
	Complete(user, node string) bool
}

type nopHealer struct{}

func (nopHealer) RecordUser(string)                {}
func (nopHealer) Missed(string, string, string)    {}
func (nopHealer) Suspect(string, string)           {}
func (nopHealer) Owed(string, string, string) bool { return false }
func (nopHealer) Complete(string, string) bool     { return false }
