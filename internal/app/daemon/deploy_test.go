package daemon

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"

	"gopkg.in/yaml.v3"
)

// The Kubernetes example parses and holds what the cluster needs: a
// StatefulSet (stable names) whose probes are /readyz and /healthz and
// whose grace period outlasts the leave (50 s) and the flush (15 s), a
// headless Service publishing pods before they are ready (the seeds), a
// PodDisruptionBudget of one.
func TestKubernetesExample(t *testing.T) {
	b, err := os.ReadFile("../../../deploy/kubernetes/presence.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type probe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
		} `yaml:"httpGet"`
	}
	type doc struct {
		Kind string `yaml:"kind"`
		Spec struct {
			ClusterIP                string `yaml:"clusterIP"`
			PublishNotReadyAddresses bool   `yaml:"publishNotReadyAddresses"`
			MaxUnavailable           int    `yaml:"maxUnavailable"`
			ServiceName              string `yaml:"serviceName"`
			Template                 struct {
				Spec struct {
					Grace      int `yaml:"terminationGracePeriodSeconds"`
					Containers []struct {
						Readiness probe `yaml:"readinessProbe"`
						Liveness  probe `yaml:"livenessProbe"`
					} `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
	}
	kinds := map[string]int{}
	var headless string
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var d doc
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		kinds[d.Kind]++
		switch d.Kind {
		case "Service":
			if d.Spec.ClusterIP == "None" {
				if !d.Spec.PublishNotReadyAddresses {
					t.Error("the headless Service does not publish pods before they are ready: a starting node cannot join")
				}
				headless = d.Metadata.Name
			}
		case "PodDisruptionBudget":
			if d.Spec.MaxUnavailable != 1 {
				t.Errorf("PodDisruptionBudget maxUnavailable %d", d.Spec.MaxUnavailable)
			}
		case "StatefulSet":
			ps := d.Spec.Template.Spec
			if ps.Grace < 70 || len(ps.Containers) != 1 ||
				ps.Containers[0].Readiness.HTTPGet.Path != "/readyz" || ps.Containers[0].Liveness.HTTPGet.Path != "/healthz" {
				t.Errorf("StatefulSet: grace %d s, containers %+v", ps.Grace, ps.Containers)
			}
			if d.Spec.ServiceName == "" || d.Spec.ServiceName != headless && headless != "" {
				t.Errorf("StatefulSet serviceName %q, headless Service %q", d.Spec.ServiceName, headless)
			}
		}
	}
	if kinds["StatefulSet"] != 1 || kinds["Service"] != 2 || kinds["PodDisruptionBudget"] != 1 || headless == "" {
		t.Fatalf("kinds %v, headless %q", kinds, headless)
	}
}
