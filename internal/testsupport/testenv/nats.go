package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// NATSMQTT starts a private nats-server with JetStream and its MQTT
// gateway on free loopback ports, stopped when t ends, and returns the
// gateway's URL (tcp://127.0.0.1:PORT). It skips t when nats-server is not
// installed (Debian package nats-server). NATS_SERVER names another binary.
func NATSMQTT(t testing.TB) string {
	t.Helper()
	bin := env("NATS_SERVER", "nats-server")
	path, err := exec.LookPath(bin)
	if err != nil {
		t.Skipf("%s not found (install the Debian package nats-server): the NATS MQTT gateway tests need it", bin)
	}
	dir := t.TempDir()
	mqttAddr := FreeAddr(t)
	conf := fmt.Sprintf(`listen: %q
server_name: %q
jetstream { store_dir: %q }
mqtt { listen: %q }
`, FreeAddr(t), Name(t), filepath.Join(dir, "js"), mqttAddr)
	confPath := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, "-c", confPath)
	log, err := os.Create(filepath.Join(dir, "nats.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		log.Close()
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", mqttAddr, time.Second)
		if err == nil {
			c.Close()
			return "tcp://" + mqttAddr
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(log.Name())
			t.Fatalf("nats-server exited (%v):\n%s", err, out)
		default:
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(log.Name())
			t.Fatalf("nats-server MQTT gateway not listening on %s after 15 s:\n%s", mqttAddr, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
