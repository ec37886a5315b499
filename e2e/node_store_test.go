package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/node/filestore"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// nsVersion is the content written with stamp n: its size varies, so a
// torn write can't pass for another version.
func nsVersion(n int) []byte {
	var seed [32]byte
	seed[0], seed[1] = byte(n), byte(n>>8)
	c := rand.NewChaCha8(seed)
	b := make([]byte, 64<<10+int(c.Uint64()%(2<<20)))
	c.Read(b)
	return b
}

func nsStamp(base time.Time, n int) stamp.Stamp {
	return stamp.Stamp{Wall: base.Add(time.Duration(n) * time.Millisecond).UnixNano(), Proxy: "e2e"}
}

// nsPost writes data as a stamped version through a node's file API and
// returns the status.
func nsPost(ctx context.Context, url, jwt, p string, st stamp.Stamp, data []byte) (int, error) {
	buf := &bytes.Buffer{}
	mw := multipart.NewWriter(buf)
	fw, _ := mw.CreateFormFile("data", "f")
	fw.Write(data)
	mw.Close()
	req, err := http.NewRequestWithContext(ctx, "POST", url+"/v1/fs/"+p+"?mode=384", buf)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", "Bearer "+jwt)
	req.Header.Set(stamp.Header, st.String())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestNodeKillDuringWrites: `cring node` is killed (SIGKILL) again and
// again while stamped versions are being written. After every restart the
// name holds one whole version, at least as new as the last acknowledged
// one, whose recorded checksum and stamp match its bytes, and no temp file
// is left.
func TestNodeKillDuringWrites(t *testing.T) {
	bin := cringBinary(t)
	data := filepath.Join(t.TempDir(), "data")
	ports, err := devcluster.FreePorts("127.0.0.1", 3)
	if err != nil {
		t.Fatal(err)
	}
	n := &pgNode{name: "crash", dataDir: data, http: ports[0], ssh: ports[1], health: ports[2]}
	run := func() *exec.Cmd {
		cmd := exec.Command(bin, "node", "--ssh-port", fmt.Sprint(n.ssh), "--meta-port", "0")
		cmd.Env = append(os.Environ(), "CHARM_SERVER_DATA_DIR="+data, "CHARM_SERVER_BIND_ADDRESS=127.0.0.1",
			"CHARM_SERVER_HOST=127.0.0.1", fmt.Sprintf("CHARM_SERVER_HTTP_PORT=%d", n.http),
			fmt.Sprintf("CHARM_SERVER_HEALTH_PORT=%d", n.health), "CRING_ACCOUNTS=")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		testwait.For(t, 30*time.Second, "the condition", func() bool { return healthy(n.healthURL()) })
		testwait.For(t, 10*time.Second, "the condition", func() bool {
			resp, err := http.Get(n.httpURL() + "/v1/public/jwks")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil && resp.StatusCode == 200
		})
		return cmd
	}
	cmd := run()
	id, err := clientAt(t, t.TempDir(), n.ssh, n.http).ID()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.LoadSigner(filepath.Join(data, ".ssh", "charm_server_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := signer.Sign(id, n.httpURL(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now()
	r := rand.New(rand.NewPCG(42, 1))
	next := 0   // the next version to write
	acked := -1 // the newest version acknowledged
	onDisk := filepath.Join(data, "files", id, "crash", "f")
	for round := range 6 {
		var done atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		writer := make(chan int)
		go func(from int) {
			last := -1
			defer func() { writer <- last }()
			for v := from; ctx.Err() == nil; v++ {
				status, err := nsPost(ctx, n.httpURL(), jwt, "crash/f", nsStamp(base, v), nsVersion(v))
				if err != nil {
					return // the node died under it
				}
				if status != 200 {
					t.Errorf("version %d: status %d", v, status)
					return
				}
				last = v
				done.Add(1)
			}
		}(next)
		// Kill after a random number of acknowledged writes: on even
		// rounds while an upload is being written, on odd ones wherever
		// the writer happens to be.
		target := int64(1 + r.IntN(4))
		testwait.For(t, 60*time.Second, "the condition", func() bool { return done.Load() >= target })
		if round%2 == 0 {
			tmp := filepath.Join(data, "cring", "tmp")
			// A temp file lasts a few milliseconds.
			testwait.ForEvery(t, 60*time.Second, time.Millisecond, "an upload's temp file", func() bool {
				des, _ := os.ReadDir(tmp)
				return len(des) > 0
			})
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		cancel()
		last := <-writer
		if last >= 0 {
			acked = last
		}
		next = acked + 2 // past whatever was in flight
		left, _ := os.ReadDir(filepath.Join(data, "cring", "tmp"))

		cmd = run()
		if des, _ := os.ReadDir(filepath.Join(data, "cring", "tmp")); len(des) != 0 {
			t.Fatalf("round %d: %d temp files after restart", round, len(des))
		}
		f, err := os.Open(onDisk)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		v, err := filestore.ReadVersion(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(onDisk)
		sum := sha256.Sum256(b)
		held := -1
		for k := acked; k <= acked+1; k++ {
			if v.Stamp == nsStamp(base, k) {
				held = k
			}
		}
		t.Logf("round %d: killed after version %d was acknowledged, %d upload(s) cut; the file holds version %d", round, acked, len(left), held)
		if held < 0 || !bytes.Equal(b, nsVersion(held)) || v.SHA256 != hex.EncodeToString(sum[:]) || v.Size != int64(len(b)) {
			t.Fatalf("round %d: file holds %d bytes recorded as %+v; last acknowledged version %d", round, len(b), v, acked)
		}
	}
	_ = cmd.Process.Kill()
}

// TestNodeVersionedDevcluster: devcluster's in-process nodes can run cring
// node's store: stamped writes are checked, and what a node holds survives
// its restart.
func TestNodeVersionedDevcluster(t *testing.T) {
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := devcluster.New(t.TempDir(), devcluster.Options{Nodes: 2, PublicURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), Versioned: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	kp, err := keygen.New(filepath.Join(t.TempDir(), "user"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	id, err := dc.SeedUser(kp.RawAuthorizedKey())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.LoadSigner(dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := signer.Sign(id, dc.PublicURL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now()
	nd := dc.Nodes[0]
	ctx := context.Background()
	for _, step := range []struct {
		v, status int
	}{{2, 200}, {1, 409}, {2, 200}} {
		if status, err := nsPost(ctx, nd.HTTPURL(), jwt, "dc/f", nsStamp(base, step.v), []byte(fmt.Sprint(step.v))); err != nil || status != step.status {
			t.Fatalf("version %d: %d %v, want %d", step.v, status, err, step.status)
		}
	}
	if err := dc.Stop(nd); err != nil {
		t.Fatal(err)
	}
	if err := dc.Start(ctx, nd); err != nil {
		t.Fatal(err)
	}
	if status, err := nsPost(ctx, nd.HTTPURL(), jwt, "dc/f", nsStamp(base, 1), []byte("1")); err != nil || status != 409 {
		t.Fatalf("older version after a restart: %d %v, want 409", status, err)
	}
	if b, _ := os.ReadFile(nd.FilePath(id, "dc/f")); string(b) != "2" {
		t.Fatalf("on disk: %q", b)
	}
}
