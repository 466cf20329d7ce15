package daemon

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/presence-dev/presence/internal/wire"
)

// clusterView is GET /v1/cluster.
type clusterView struct {
	Node         string          `json:"node"`
	Clustered    bool            `json:"clustered"`
	Partitions   int             `json:"partitions"`
	OwnedDevices int             `json:"owned_devices"`
	Members      []clusterMember `json:"members"`
}

type clusterMember struct {
	Name       string `json:"name"`
	Gossip     string `json:"gossip_addr,omitempty"`
	Data       string `json:"data_addr,omitempty"`
	State      string `json:"state"`
	Usable     bool   `json:"usable"`
	Partitions int    `json:"partitions_owned"`
}

func (d *Daemon) serveCluster(w http.ResponseWriter, _ *http.Request) {
	v := clusterView{OwnedDevices: d.eng.Counts().Total, Members: []clusterMember{}}
	if d.node == nil {
		v.Node, v.Partitions = "standalone", 1
		v.Members = append(v.Members, clusterMember{Name: v.Node, State: "alive", Usable: true, Partitions: 1})
	} else {
		t := d.node.Table()
		v.Node, v.Clustered, v.Partitions = d.node.Name(), true, t.Partitions()
		counts := t.Counts()
		for _, m := range d.node.Members() {
			v.Members = append(v.Members, clusterMember{Name: m.Name, Gossip: m.Gossip, Data: m.Data,
				State: m.State, Usable: m.Usable, Partitions: counts[m.Name]})
		}
		slices.SortFunc(v.Members, func(a, b clusterMember) int { return strings.Compare(a.Name, b.Name) })
	}
	b, err := json.Marshal(v)
	if err != nil {
		wire.WriteError(w, http.StatusInternalServerError, "internal error")
		return
	}
	wire.WriteJSON(w, http.StatusOK, append(b, '\n'))
}
