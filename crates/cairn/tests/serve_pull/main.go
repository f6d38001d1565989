// cairnpull: pull an image through containerd's own client with its pull unpacker
// (containerd.WithPullUnpack), as CRI does. containerd 1.6's `ctr images pull` fetches first
// and then unpacks with Image.Unpack, which never sends the `containerd.io/snapshot.ref` label;
// this unpacker does, so a snapshotter that holds a layer can answer AlreadyExists for it.
//
//	cairnpull -address SOCK -namespace NS -snapshotter NAME [-plain-http] REF
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/remotes/docker"
)

func main() {
	address := flag.String("address", "/run/containerd/containerd.sock", "containerd's socket")
	ns := flag.String("namespace", "default", "containerd namespace")
	snapshotter := flag.String("snapshotter", "cairn", "snapshotter to unpack into")
	plainHTTP := flag.Bool("plain-http", false, "talk plain HTTP to the registry")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: cairnpull [flags] REF")
		os.Exit(2)
	}
	ref := flag.Arg(0)
	client, err := containerd.New(*address)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cairnpull: connect to %s: %v\n", *address, err)
		os.Exit(1)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), *ns)
	var hostOpts []docker.RegistryOpt
	if *plainHTTP {
		hostOpts = append(hostOpts, docker.WithPlainHTTP(docker.MatchAllHosts))
	}
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(hostOpts...),
	})
	img, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(*snapshotter),
	)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cairnpull: pull %s: %v\n", ref, err)
		os.Exit(1)
	}
	fmt.Printf("%s %s\n", img.Name(), img.Target().Digest)
}
