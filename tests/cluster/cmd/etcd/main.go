// Command etcd is etcd's own server main (go.etcd.io/etcd/server/v3's main.go), built here
// so that the binary is named etcd and its version follows this module's go.mod.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
