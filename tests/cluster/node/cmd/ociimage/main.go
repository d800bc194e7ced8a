// Command ociimage writes a one-layer OCI image archive (an image layout in a tar, as
// `ctr images import` reads it) from files on this machine, so that the test node's
// containerd runs images with no registry and no image builder: the pause image, the
// test pods' image and the agent's image are each a few binaries and the shared
// libraries they load.
//
//	ociimage -o image.tar -name docker.io/library/probe:1 -entrypoint "/probe serve" \
//	    /path/on/host=/probe /lib/x86_64-linux-gnu/libc.so.6=/lib/x86_64-linux-gnu/libc.so.6
//
// With -arch given more than once it writes a multi-arch image: one manifest per
// architecture under an image index (what `docker buildx --platform` pushes), and a file
// argument prefixed with an architecture ("arm64:/host/path=/image/path") goes only into
// that architecture's layer (cargo xtask image):
//
//	ociimage -o agent.tar -name docker.io/library/stagewall:0.1.0 -entrypoint /stagewall \
//	    -arch amd64 -arch arm64 amd64:/build/x86_64/stagewall=/stagewall arm64:/build/aarch64/stagewall=/stagewall
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

const (
	layerType    = "application/vnd.oci.image.layer.v1.tar"
	configType   = "application/vnd.oci.image.config.v1+json"
	manifestType = "application/vnd.oci.image.manifest.v1+json"
	indexType    = "application/vnd.oci.image.index.v1+json"
)

// The time every entry carries, so that the same files give the same image digest.
var epoch = time.Unix(0, 0)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type blob struct {
	digest string
	data   []byte
}

func newBlob(data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{digest: "sha256:" + hex.EncodeToString(sum[:]), data: data}
}

func (b blob) descriptor(mediaType string) descriptor {
	return descriptor{MediaType: mediaType, Digest: b.digest, Size: len(b.data)}
}

// layer is a tar of the files (host path = image path), their parent directories and
// the directories the runtime mounts over.
func layer(files []string) ([]byte, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	dirs := map[string]bool{"etc": true, "proc": true, "sys": true, "dev": true, "tmp": true, "run": true, "var": true}
	type entry struct{ host, image string }
	var entries []entry
	for _, f := range files {
		host, image, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(image, "/") {
			return nil, fmt.Errorf("%q: want HOST_PATH=/IMAGE_PATH", f)
		}
		image = strings.TrimPrefix(path.Clean(image), "/")
		entries = append(entries, entry{host, image})
		for d := path.Dir(image); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var names []string
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].image < entries[j].image })
	for _, e := range entries {
		data, err := os.ReadFile(e.host)
		if err != nil {
			return nil, err
		}
		info, err := os.Stat(e.host)
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: e.image, Mode: int64(info.Mode().Perm()), Size: int64(len(data)), ModTime: epoch}
		if err := w.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// archs is the repeatable -arch flag.
type archs []string

func (a *archs) String() string { return strings.Join(*a, ",") }
func (a *archs) Set(v string) error {
	for _, have := range *a {
		if have == v {
			return fmt.Errorf("-arch %s given twice", v)
		}
	}
	*a = append(*a, v)
	return nil
}

// filesFor is the file arguments that go into arch's layer: unprefixed ones and those
// prefixed with "arch:".
func filesFor(arch string, all, known []string) []string {
	var files []string
	for _, f := range all {
		prefix, rest, ok := strings.Cut(f, ":")
		isArch := false
		for _, k := range known {
			isArch = isArch || (ok && prefix == k)
		}
		switch {
		case !isArch:
			files = append(files, f)
		case prefix == arch:
			files = append(files, rest)
		}
	}
	return files
}

func mustJSON(v any) []byte {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return data
}

func run() error {
	out := flag.String("o", "", "the archive to write")
	name := flag.String("name", "", "the image's full name, e.g. docker.io/library/probe:1")
	entrypoint := flag.String("entrypoint", "", "the command the container runs, words split at spaces, e.g. \"/probe pause\"")
	var arches archs
	flag.Var(&arches, "arch", "an architecture of the image (amd64, arm64; repeatable; default amd64)")
	flag.Parse()
	if *out == "" || *name == "" || *entrypoint == "" || flag.NArg() == 0 {
		return fmt.Errorf("usage: ociimage -o ARCHIVE -name NAME -entrypoint PATH HOST_PATH=/IMAGE_PATH...")
	}
	if len(arches) == 0 {
		arches = archs{"amd64"}
	}
	var blobs []blob
	var manifests []descriptor
	for _, arch := range arches {
		files := filesFor(arch, flag.Args(), arches)
		if len(files) == 0 {
			return fmt.Errorf("no files for -arch %s", arch)
		}
		layerData, err := layer(files)
		if err != nil {
			return err
		}
		layerBlob := newBlob(layerData)
		config := newBlob(mustJSON(map[string]any{
			"architecture": arch,
			"os":           "linux",
			"config": map[string]any{
				"Entrypoint": strings.Fields(*entrypoint),
				"Env":        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			},
			"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerBlob.digest}},
		}))
		manifest := newBlob(mustJSON(map[string]any{
			"schemaVersion": 2,
			"mediaType":     manifestType,
			"config":        config.descriptor(configType),
			"layers":        []descriptor{layerBlob.descriptor(layerType)},
		}))
		described := manifest.descriptor(manifestType)
		// The platform containerd unpacks for (the test node's own, or one of these).
		described.Platform = &platform{Architecture: arch, OS: "linux"}
		blobs = append(blobs, layerBlob, config, manifest)
		manifests = append(manifests, described)
	}
	tag := (*name)[strings.LastIndex(*name, ":")+1:]
	named := manifests[0]
	if len(manifests) > 1 {
		// Many platforms: the name points at an image index over their manifests.
		nested := newBlob(mustJSON(map[string]any{"schemaVersion": 2, "mediaType": indexType, "manifests": manifests}))
		blobs = append(blobs, nested)
		named = nested.descriptor(indexType)
	}
	named.Annotations = map[string]string{
		"io.containerd.image.name":          *name,
		"org.opencontainers.image.ref.name": tag,
	}
	index := mustJSON(map[string]any{"schemaVersion": 2, "mediaType": indexType, "manifests": []descriptor{named}})

	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	w := tar.NewWriter(f)
	add := func(name string, data []byte) error {
		if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := w.Write(data)
		return err
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	for _, b := range blobs {
		if err := add("blobs/sha256/"+strings.TrimPrefix(b.digest, "sha256:"), b.data); err != nil {
			return err
		}
	}
	if err := add("index.json", index); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return f.Close()
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}
