package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

var (
	buildOnce sync.Once
	cringBin  string
	buildErr  error
)

// cringBinary builds ./cmd/cring once per test run.
func cringBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cring-bin")
		if err != nil {
			buildErr = err
			return
		}
		cringBin = filepath.Join(dir, "cring")
		out, err := exec.Command("go", "build", "-o", cringBin, "../cmd/cring").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return cringBin
}

// TestServeRejectsBadConfig: bad config is one clear line on stderr and exit
// code 2, before anything listens.
func TestServeRejectsBadConfig(t *testing.T) {
	bin := cringBinary(t)
	cfgDir := t.TempDir()
	dupYAML := filepath.Join(cfgDir, "dup.yaml")
	os.WriteFile(dupYAML, []byte("nodes:\n  - {name: a, url: http://127.0.0.1:1}\n  - {name: a, url: http://127.0.0.1:2}\n"), 0o600)
	typoYAML := filepath.Join(cfgDir, "typo.yaml")
	os.WriteFile(typoYAML, []byte("nodez: []\n"), 0o600)
	for _, tt := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"no nodes", nil, nil, "no nodes configured"},
		{"W > N", []string{"--host", "http://127.0.0.1:1", "--host", "http://127.0.0.1:2", "--write-quorum", "3"}, nil, "write-quorum 3 is larger than replicas 2"},
		{"bad url", []string{"--host", "127.0.0.1:1"}, nil, "want an http:// or https:// URL"},
		{"duplicate host", []string{"--host", "http://127.0.0.1:1", "--host", "http://127.0.0.1:1"}, nil, "duplicate node"},
		{"duplicate in yaml", []string{"--config", dupYAML}, nil, `duplicate node name "a"`},
		{"unknown yaml key", []string{"--config", typoYAML}, nil, "field nodez not found"},
		{"env W > N", nil, []string{"CRING_HOST=http://127.0.0.1:1,http://127.0.0.1:2", "CRING_WRITE_QUORUM=5"}, "write-quorum 5 is larger"},
		{"bad flag", []string{"--nope"}, nil, "unknown flag"},
		{"admin open without a token", []string{"--host", "http://127.0.0.1:1", "--admin-address", "0.0.0.0:0"}, nil, "set an admin-token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"serve", "--address", "127.0.0.1:0", "--ssh-proxy-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0"}, tt.args...)...)
			cmd.Env = append(os.Environ(), tt.env...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			msg := strings.TrimSpace(stderr.String())
			if code != 2 || !strings.Contains(msg, tt.want) || strings.Count(msg, "\n") != 0 {
				t.Fatalf("exit %d, stderr %q; want exit 2 and one line containing %q", code, msg, tt.want)
			}
		})
	}
}

// TestProxyMemoryFlat: a 512 MiB upload through a `cring serve` process
// raises its peak RSS (read by the process itself, /status) by < 64 MiB.
func TestProxyMemoryFlat(t *testing.T) {
	bin := cringBinary(t)
	dc, httpAddr, sshAddr, admin := localNodes(t, 3)
	publicURL := dc.PublicURL
	args := []string{"serve", "--address", httpAddr, "--ssh-proxy-address", sshAddr,
		"--admin-address", admin, "--public-url", publicURL}
	for _, n := range dc.Nodes {
		args = append(args, "--host", n.HTTPURL())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	testwait.For(t, 10*time.Second, "the condition", func() bool { _, err := peakRSS(admin); return err == nil })

	kp, err := keygen.New(filepath.Join(t.TempDir(), "client"), keygen.WithKeyType(keygen.Ed25519))
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
	jwt, err := signer.Sign(id, publicURL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	// Warm up the connection pool and key cache with a small upload first,
	// so the measurement is about the body only.
	upload(t, httpAddr, jwt, "warm", 1<<20)
	before, err := peakRSS(admin)
	if err != nil {
		t.Fatal(err)
	}
	const size = 512 << 20
	upload(t, httpAddr, jwt, "big", size)
	after, err := peakRSS(admin)
	if err != nil {
		t.Fatal(err)
	}
	growth := after - before
	t.Logf("proxy peak RSS: %d MiB before, %d MiB after a 512 MiB upload (growth %d MiB)", before>>20, after>>20, growth>>20)
	if growth >= 64<<20 {
		t.Fatalf("peak RSS grew by %d MiB, want < 64 MiB", growth>>20)
	}
	// Acked at quorum: the last replica may still be writing.
	for _, n := range dc.Nodes {
		testwait.For(t, 60*time.Second, "the condition", func() bool {
			st, err := os.Stat(n.FilePath(id, "big"))
			return err == nil && st.Size() == size
		})
	}
}

// upload streams a generated body of size bytes as a Charm multipart upload.
func upload(t testing.TB, addr, jwt, name string, size int64) {
	t.Helper()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, err := mw.CreateFormFile("data", name)
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		bw := bufio.NewWriterSize(part, 1<<20)
		chunk := make([]byte, 1<<20)
		for i := range chunk {
			chunk[i] = byte(i * 7)
		}
		for left := size; left > 0; left -= int64(len(chunk)) {
			n := min(left, int64(len(chunk)))
			if _, err := bw.Write(chunk[:n]); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		if err := bw.Flush(); err != nil {
			pw.CloseWithError(err)
			return
		}
		pw.CloseWithError(mw.Close())
	}()
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/fs/"+name+"?mode=420", pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", "bearer "+jwt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload %s: %d %s", name, resp.StatusCode, b)
	}
}

func peakRSS(admin string) (int64, error) {
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st struct {
		PeakRSS int64 `json:"peak_rss_bytes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, err
	}
	if st.PeakRSS == 0 {
		return 0, fmt.Errorf("no peak_rss_bytes in /status")
	}
	return st.PeakRSS, nil
}
