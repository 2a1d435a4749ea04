// Command etcd is the etcd server, built at the version that the pinned
// k8s.io/kubernetes release is tested against (see go.mod). Debian bookworm's
// etcd-server (3.4.23) is older than what kube-apiserver v1.34 supports.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
