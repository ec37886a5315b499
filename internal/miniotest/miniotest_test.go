package miniotest_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/miniotest"
)

// TestStopStart: the server goes down and comes back on the same address
// with its data.
func TestStopStart(t *testing.T) {
	m := miniotest.Start(t)
	ctx := context.Background()
	cfg := backup.Config{URL: m.Endpoint, Bucket: "keep", AccessKey: m.AccessKey, SecretKey: m.SecretKey}
	tg, err := backup.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := tg.Put(ctx, "u/x", strings.NewReader("kept"), 4, backup.Meta{ModTime: time.Now()}); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	if resp, err := http.Get(m.Endpoint + "/minio/health/live"); err == nil {
		resp.Body.Close()
		t.Fatal("still answering after Stop")
	}
	m.Start()
	if _, err := tg.Stat(ctx, "u/x"); err != nil {
		t.Fatalf("object lost across a restart: %v", err)
	}
}
