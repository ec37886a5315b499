package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/cring-dev/cring/internal/devcluster"
)

// TestDevControlRefusesWebPages: what a web page the developer visits can
// send to cring dev's loopback control (a form POST, a cross-origin fetch, a
// name rebound to 127.0.0.1) stops no node; cring dev node does.
func TestDevControlRefusesWebPages(t *testing.T) {
	base, err := devcluster.FreePortRange("127.0.0.1", 4)
	if err != nil {
		t.Fatal(err)
	}
	startDev(t, t.TempDir(), base)
	admin := fmt.Sprintf("127.0.0.1:%d", base+3)
	stop := "http://" + admin + "/dev/nodes/node1/stop"
	for _, tt := range []struct {
		name    string
		method  string
		headers map[string]string
		host    string
	}{
		{name: "form post", method: http.MethodPost, headers: map[string]string{
			"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"}},
		{name: "simple post, no origin", method: http.MethodPost, headers: map[string]string{"Content-Type": "text/plain"}},
		{name: "cross-origin with the header", method: http.MethodPost, headers: map[string]string{
			"X-Cring-Control": "1", "Origin": "http://evil.example"}},
		{name: "rebound name", method: http.MethodPost, host: fmt.Sprintf("evil.example:%d", base+3), headers: map[string]string{
			"X-Cring-Control": "1", "Origin": fmt.Sprintf("http://evil.example:%d", base+3)}},
		{name: "preflight", method: http.MethodOptions, headers: map[string]string{
			"Origin": "http://evil.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-cring-control"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, stop, strings.NewReader("x=1"))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			if tt.host != "" {
				req.Host = tt.host
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("%s %s: %d %q, CORS %q", tt.method, stop, resp.StatusCode, b, resp.Header.Get("Access-Control-Allow-Origin"))
			}
		})
	}
	bin := cringBinary(t)
	if out, err := exec.Command(bin, "dev", "node", "list", "--admin", admin).CombinedOutput(); err != nil || strings.Count(string(out), "● up") != 3 {
		t.Fatalf("after the web page's requests every node should be up: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "dev", "node", "stop", "node1", "--admin", admin).CombinedOutput(); err != nil || !strings.Contains(string(out), "stopped") {
		t.Fatalf("cring dev node stop: %v\n%s", err, out)
	}
}
