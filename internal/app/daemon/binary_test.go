package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	binDir    string
)

// presenced builds the real binary once per test run.
func presenced(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = osMkdirTemp()
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "presenced")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/presence-dev/presence/cmd/presenced").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is a presenced process whose log is watched for its API address.
type proc struct {
	cmd  *exec.Cmd
	addr chan string
	log  strings.Builder
	mu   sync.Mutex
	done chan error
}

var servingRE = regexp.MustCompile(`msg="api: serving".* addr=(\S+)`)

func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(presenced(t), args...), addr: make(chan string, 1), done: make(chan error, 1)}
	p.cmd.Env = env
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				p.addr <- m[1]
			}
		}
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func (p *proc) waitServing(t *testing.T) string {
	t.Helper()
	select {
	case a := <-p.addr:
		return a
	case err := <-p.done:
		t.Fatalf("presenced exited: %v\n%s", err, p.output())
	case <-time.After(15 * time.Second):
		t.Fatalf("presenced did not start\n%s", p.output())
	}
	return ""
}

// kill -9 loses no transition: devices whose deadline passes while the
// process is dead turn offline at the next start (cause restart). SIGTERM
// then flushes and exits 0.
func TestKill9ThenRestart(t *testing.T) {
	s := newStack(t, 401, 402)
	c := s.config()
	env := s.env(c)
	p := startProc(t, env)
	p.waitServing(t)
	testenv.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(p.output(), "ingest: subscribed") {
			return errors.New("not subscribed yet")
		}
		return nil
	})
	for _, id := range []int{401, 402} {
		s.publish(id, "telemetry", "{}")
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, id := range []int{401, 402} {
			if st, _, err := s.redisState(id); err != nil || st != "online" {
				return fmt.Errorf("device %d: %q %v", id, st, err)
			}
			// A kill -9 loses the history rows still queued (at most one
			// history interval); this test is about what happens after.
			if h := s.historyOf(id); len(h) != 1 {
				return fmt.Errorf("history of %d: %+v", id, h)
			}
		}
		return nil
	})
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	time.Sleep(c.Engine.DefaultTimeout + 500*time.Millisecond)

	q := startProc(t, env)
	q.waitServing(t)
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, id := range []int{401, 402} {
			if st, _, err := s.redisState(id); err != nil || st != "offline" {
				return fmt.Errorf("device %d: %q %v", id, st, err)
			}
			if h := s.historyOf(id); len(h) != 2 || h[1].cause != "restart" {
				return fmt.Errorf("history of %d: %+v", id, h)
			}
		}
		return nil
	})
	if err := q.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-q.done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, q.output())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if out := q.output(); !strings.Contains(out, "msg=stopped") {
		t.Fatalf("no clean stop in the log:\n%s", out)
	}
}

func TestBinaryFlags(t *testing.T) {
	run := func(env []string, args ...string) (int, string) {
		cmd := exec.Command(presenced(t), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	code, out := run(nil, "-h")
	if code != 0 || !strings.Contains(out, "DEVICE_OFFLINE_TIMEOUT") || !strings.Contains(out, "-demo") {
		t.Fatalf("-h: exit %d\n%s", code, out)
	}
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"-timeout", "0.5"}, "-timeout"},
		{[]string{"DEVICE_OFFLINE_TIMEOUT=soon"}, nil, "DEVICE_OFFLINE_TIMEOUT"},
		{nil, []string{"-nope"}, "nope"},
		{nil, []string{"-telemetry-topic", "devices/x/telemetry"}, "{id}"},
		{[]string{"REDIS_PORT=abc", "REDIS_HOST=localhost"}, nil, "REDIS_PORT"},
	} {
		code, out := run(tc.env, tc.args...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%v %v: exit %d, output:\n%s", tc.env, tc.args, code, out)
		}
	}
}

// A cluster node on a non-loopback address refuses to start without a
// cluster key (exit status 2, naming the way out); with
// PRESENCE_CLUSTER_INSECURE=true it starts and warns.
func TestBinaryRefusesInsecureCluster(t *testing.T) {
	// Ephemeral ports (0): nothing to race for with other tests.
	env := []string{"PRESENCE_HTTP_ADDR=127.0.0.1:0", "PRESENCE_EMBEDDED_MQTT_ADDR=127.0.0.1:0",
		"PRESENCE_NODE_NAME=lonely", "PRESENCE_CLUSTER_BIND=0.0.0.0:0", "PRESENCE_CLUSTER_DATA_ADDR=0.0.0.0:0"}
	cmd := exec.Command(presenced(t))
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "PRESENCE_CLUSTER_KEY") ||
		!strings.Contains(string(out), "PRESENCE_CLUSTER_INSECURE") {
		t.Fatalf("without a key: %v\n%s", err, out)
	}
	p := startProc(t, append(env, "PRESENCE_CLUSTER_INSECURE=true"))
	p.waitServing(t)
	testenv.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(p.output(), "WITHOUT a cluster key") {
			return errors.New("no warning logged")
		}
		return nil
	})
}

// A taken HTTP port is a clear error and exit status 1.
func TestBinaryPortTaken(t *testing.T) {
	p := startProc(t, []string{"PRESENCE_HTTP_ADDR=127.0.0.1:0", "PRESENCE_EMBEDDED_MQTT_ADDR=127.0.0.1:0"})
	addr := p.waitServing(t)
	cmd := exec.Command(presenced(t))
	cmd.Env = []string{"PRESENCE_HTTP_ADDR=" + addr, "PRESENCE_EMBEDDED_MQTT_ADDR=127.0.0.1:0"}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "is in use") || !strings.Contains(string(out), "PRESENCE_HTTP_ADDR") {
		t.Fatalf("second instance: %v\n%s", err, out)
	}
}
