package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/miniotest"
	"github.com/cring-dev/cring/internal/testwait"
)

// backupTarget is where a test's proxy backs up, and the test's own view of it.
type backupTarget struct {
	cfg   config.Backup
	minio *miniotest.Server // nil for file://
}

func minioBackup(t *testing.T, mode string) backupTarget {
	m := miniotest.Start(t)
	t.Setenv("AWS_ACCESS_KEY_ID", m.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", m.SecretKey)
	return backupTarget{cfg: config.Backup{URL: m.Endpoint, Bucket: "cring-test", Mode: mode}, minio: m}
}

func fileBackup(t *testing.T, mode string) backupTarget {
	return backupTarget{cfg: config.Backup{URL: "file://" + filepath.Join(t.TempDir(), "backup"), Mode: mode}}
}

func (b backupTarget) open(t *testing.T) backup.Target {
	t.Helper()
	tg, err := backup.Open(context.Background(), backup.Config{URL: b.cfg.URL, Bucket: b.cfg.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// object reads a user's file from the backup; nil when absent.
func object(t *testing.T, tg backup.Target, u *user, name string) []byte {
	t.Helper()
	ep, err := u.fs.EncryptPath(name)
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := tg.Get(context.Background(), u.id+"/"+ep)
	if errors.Is(err, backup.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil && strings.Contains(err.Error(), "does not exist") {
		return nil // deleted between the open and the read (an async delete landing)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBackupMirrorsWrites: every acknowledged write is in the backup with
// the bytes the nodes store (client-side encrypted), and deletes reach it.
func TestBackupMirrorsWrites(t *testing.T) {
	for _, tt := range []struct {
		name string
		bt   func(*testing.T, string) backupTarget
		mode string
	}{
		{"minio sync", minioBackup, "sync"},
		{"minio async", minioBackup, "async"},
		{"file async", fileBackup, "async"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bt := tt.bt(t, tt.mode)
			tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, backup: bt.cfg})
			tg := bt.open(t)
			u := tc.newUser(t)
			names := []string{"b/one", "b/two", "b/sub/three"}
			for i, n := range names {
				u.put(t, n, randBytes(t, 1000+i*5000))
			}
			for _, n := range names {
				identicalOn(t, tc, u, n, []string{"node1", "node2", "node3"}, 5*time.Second)
				want := tc.onDisk(t, u, n)["node1"]
				if tt.mode == "sync" {
					if got := object(t, tg, u, n); !bytes.Equal(got, want) {
						t.Fatalf("%s: backup holds %d bytes, nodes %d (sync: must be there at the ack)", n, len(got), len(want))
					}
					continue
				}
				testwait.For(t, 10*time.Second, "the condition", func() bool { return bytes.Equal(object(t, tg, u, n), want) })
			}
			if err := u.fs.Remove("b/two"); err != nil {
				t.Fatal(err)
			}
			testwait.For(t, 10*time.Second, "the condition", func() bool { return object(t, tg, u, "b/two") == nil })
			if object(t, tg, u, "b/one") == nil {
				t.Fatal("deleting one file removed another from the backup")
			}
		})
	}
}

// TestBackupQueueSurvivesRestart: with MinIO down, async writes are acked
// from the durable queue; the proxy restarts (MinIO still down), MinIO
// returns, and every object arrives.
func TestBackupQueueSurvivesRestart(t *testing.T) {
	bt := minioBackup(t, "async")
	dataDir := t.TempDir()
	o := clusterOpts{nodes: 3, replicas: 3, quorum: 2, backup: bt.cfg, dataDir: dataDir}
	tc := startCluster(t, o)
	u := tc.newUser(t)
	u.put(t, "q/warm", []byte("before the outage"))

	bt.minio.Stop()
	want := map[string][]byte{}
	for i := range 5 {
		n := fmt.Sprintf("q/f%d", i)
		u.put(t, n, randBytes(t, 3000+i))
	}
	for i := range 5 {
		n := fmt.Sprintf("q/f%d", i)
		identicalOn(t, tc, u, n, []string{"node1", "node2", "node3"}, 5*time.Second)
		want[n] = tc.onDisk(t, u, n)["node1"]
	}
	// Restart the proxy on the same data dir while MinIO is still down.
	tc.srvStop()
	p2 := tc.startProxy(o, 3, "")
	if p2.srv == nil {
		t.Fatal("proxy did not restart")
	}
	bt.minio.Start()
	tg := bt.open(t)
	testwait.For(t, 30*time.Second, "the condition", func() bool {
		for n, b := range want {
			if !bytes.Equal(object(t, tg, u, n), b) {
				return false
			}
		}
		return true
	})
}

// TestBackupSyncTargetDown: in sync mode a write the backup can't take is
// not acknowledged.
func TestBackupSyncTargetDown(t *testing.T) {
	bt := minioBackup(t, "sync")
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, backup: bt.cfg})
	u := tc.newUser(t)
	u.put(t, "s/ok", []byte("fine"))
	bt.minio.Stop()
	err := u.fs.WriteFile("s/refused", memFile("s/refused", []byte("no backup, no ack")))
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "backup failed") {
		t.Fatalf("sync write with the backup down: %v, want 503 backup failed", err)
	}
}

// TestReadOnlyFallback: with every node down, reads and listings come from
// the backup (tokens still verify from the cached key set) and writes get a
// clear 503.
func TestReadOnlyFallback(t *testing.T) {
	bt := fileBackup(t, "sync")
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, backup: bt.cfg})
	u := tc.newUser(t)
	data := randBytes(t, 20000)
	u.put(t, "ro/a", data)
	u.put(t, "ro/b", []byte("bee"))
	for i := range tc.dc.Nodes {
		tc.stop(i)
	}
	tc.waitReady(0)
	if got := u.get(t, "ro/a"); !bytes.Equal(got, data) {
		t.Fatal("read from the backup differs")
	}
	got := u.ls(t, "ro")
	sort.Strings(got) // listed in encrypted-name order
	if len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("listing from the backup = %v", got)
	}
	err := u.fs.WriteFile("ro/c", memFile("ro/c", []byte("x")))
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("write with every node down: %v, want the read-only 503", err)
	}
}
