package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// buildBinary compiles the command into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// start runs the binary with a clean environment plus env.
func start(t *testing.T, bin string, env []string, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &stdout, &stderr
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("wait: %v", err)
	return -1
}

func TestBinary(t *testing.T) {
	bin := buildBinary(t)
	run := func(env []string, args ...string) (int, string, string) {
		cmd, stdout, stderr := start(t, bin, env, args...)
		return exitCode(t, cmd.Wait()), stdout.String(), stderr.String()
	}

	t.Run("help", func(t *testing.T) {
		code, stdout, _ := run(nil, "-h")
		if code != 0 {
			t.Errorf("-h exit %d, want 0", code)
		}
		for _, want := range []string{"Usage: presence-loadgen", "-broker", "MQTT_URL", "-rate", "LOADGEN_RATE",
			"-period", "-conns", "-qos", "-duration", "-count", "-silent-fraction", "-silent-after",
			"-return-after", "-status-topic", "-announce", "(default 1000)"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("-h output lacks %q", want)
			}
		}
	})

	for _, tc := range []struct {
		name    string
		env     []string
		args    []string
		wantErr string
	}{
		{"unknown flag", nil, []string{"-bogus"}, "-bogus"},
		{"bad value", nil, []string{"-rate", "lots"}, "-rate"},
		{"out of range", nil, []string{"-qos", "3"}, "-qos must be 0, 1 or 2"},
		{"bad env", []string{"LOADGEN_DEVICES=-5"}, nil, "-devices must be"},
		{"bad broker env", []string{"MQTT_URL=http://x"}, nil, "scheme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(tc.env, tc.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr, tc.wantErr) || !strings.Contains(stderr, "presence-loadgen -h") {
				t.Errorf("stderr %q lacks %q and the -h hint", stderr, tc.wantErr)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}

	t.Run("unreachable broker", func(t *testing.T) {
		code, _, stderr := run([]string{"MQTT_URL=tcp://127.0.0.1:1"}, "-connect-timeout", "2s")
		if code != 1 || !strings.Contains(stderr, "127.0.0.1:1") {
			t.Errorf("exit %d, stderr %q; want 1 and the broker named", code, stderr)
		}
	})

	t.Run("SIGINT prints the summary", func(t *testing.T) {
		broker := testenv.MQTTURL()
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetConnectTimeout(2 * time.Second))
		if tok := c.Connect(); !tok.WaitTimeout(3*time.Second) || tok.Error() != nil {
			t.Skipf("no MQTT broker at %s: %v", broker, tok.Error())
		}
		c.Disconnect(0)
		topic := fmt.Sprintf("loadgen-test/bin-%d/{id}/telemetry", time.Now().UnixNano())
		cmd, stdout, stderr := start(t, bin, []string{"MQTT_URL=" + broker, "LOADGEN_PROGRESS=200ms"},
			"-devices", "100", "-rate", "500", "-topic", topic)
		time.Sleep(1200 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if code := exitCode(t, err); code != 0 {
				t.Errorf("exit %d after SIGINT, want 0; stderr:\n%s", code, stderr)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Fatal("no exit 10s after SIGINT")
		}
		var sent, errs uint64
		if _, err := fmt.Sscanf(stdout.String(), "summary: sent=%d errors=%d", &sent, &errs); err != nil || sent < 200 || errs != 0 {
			t.Errorf("stdout %q: want a summary with ~500 sent and no errors", stdout)
		}
		if !strings.Contains(stderr.String(), "rate=") {
			t.Errorf("stderr %q lacks a progress line", stderr)
		}
	})
}
