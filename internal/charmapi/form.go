package charmapi

import (
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
)

// Form is Charm's upload form around a file's bytes, as charm's fs client
// sends it: a multipart body with one file field, "data". The part's head
// and the closing boundary are built once, so a body of any size streams
// between them with a known length, never held whole.
type Form struct {
	head, tail []byte
	ctype      string
}

// NewForm frames a file named name (a node takes the path from the URL;
// the name is only in the part header).
func NewForm(name string) *Form {
	f, _ := newForm(name, "") // writing to memory with a valid boundary cannot fail
	return f
}

// NewFormBoundary is NewForm with a fixed boundary: every form the same
// bytes around the file's (the bench's generated bodies).
func NewFormBoundary(name, boundary string) (*Form, error) {
	return newForm(name, boundary)
}

func newForm(name, boundary string) (*Form, error) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if boundary != "" {
		if err := mw.SetBoundary(boundary); err != nil {
			return nil, fmt.Errorf("form boundary: %w", err)
		}
	}
	if _, err := mw.CreateFormFile("data", name); err != nil {
		return nil, fmt.Errorf("form head: %w", err)
	}
	head := bytes.Clone(buf.Bytes())
	buf.Reset()
	if err := mw.Close(); err != nil {
		return nil, fmt.Errorf("form tail: %w", err)
	}
	return &Form{head: head, tail: bytes.Clone(buf.Bytes()), ctype: mw.FormDataContentType()}, nil
}

// ContentType is the form's Content-Type, with its boundary.
func (f *Form) ContentType() string { return f.ctype }

// Head is what comes before the file's bytes. Not to be modified.
func (f *Form) Head() []byte { return f.head }

// Tail is what comes after them. Not to be modified.
func (f *Form) Tail() []byte { return f.tail }

// Len is the length of the form around size bytes of file.
func (f *Form) Len(size int64) int64 { return int64(len(f.head)) + size + int64(len(f.tail)) }

// Body streams the form around r's bytes.
func (f *Form) Body(r io.Reader) io.Reader {
	return io.MultiReader(bytes.NewReader(f.head), r, bytes.NewReader(f.tail))
}

// Bytes is the whole form around data (small files).
func (f *Form) Bytes(data []byte) []byte {
	b := make([]byte, 0, f.Len(int64(len(data))))
	return append(append(append(b, f.head...), data...), f.tail...)
}
