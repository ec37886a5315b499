package backup

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
)

// ErrNoFilePart: the upload has no file in form field "data".
var ErrNoFilePart = errors.New(`upload has no file in form field "data"`)

// ExtractUpload streams a Charm upload (multipart/form-data, file in field
// "data", as charm's fs client sends it) and writes only that file's bytes to
// w: exactly what a node stores. Memory is a few small buffers whatever the
// size.
//
// It picks the part a node would: the first "data" part carrying a file name
// (a part without one is a plain form value to Go's r.FormFile).
//
// It always reads r to EOF, also after the file and on error, so it can sit
// on a tee of a body that is being streamed elsewhere without ever blocking
// the writer. It returns the number of bytes written to w.
func ExtractUpload(r io.Reader, contentType string, w io.Writer) (n int64, err error) {
	defer func() {
		if _, derr := io.Copy(io.Discard, r); derr != nil && err == nil {
			err = fmt.Errorf("read upload: %w", derr)
		}
	}()
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return 0, fmt.Errorf("upload content type %q: %w", contentType, err)
	}
	if mt != "multipart/form-data" || params["boundary"] == "" {
		return 0, fmt.Errorf("upload content type %q: want multipart/form-data with a boundary", contentType)
	}
	mr := multipart.NewReader(r, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return 0, ErrNoFilePart
		}
		if err != nil {
			return 0, fmt.Errorf("read upload: %w", err)
		}
		if p.FormName() != "data" || p.FileName() == "" {
			p.Close()
			continue
		}
		n, err := io.Copy(w, p)
		p.Close()
		if err != nil {
			return n, fmt.Errorf("copy uploaded file: %w", err)
		}
		return n, nil
	}
}
