//go:build unix

package cluster

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed" // the pause program's source
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Images the local node has without a registry. Both are built from local
// files when the node starts and imported into containerd; pods must use
// imagePullPolicy Never (a tag other than "latest" makes IfNotPresent work
// too, but Never says that nothing is ever pulled).
const (
	// PauseImage is the pod sandbox image: test/cluster/pause, built
	// statically with the Go toolchain.
	PauseImage = "exec-reaper.local/pause:1"
	// BusyboxImage is a shell image: Debian's busybox-static binary and a
	// symlink for each of its applets (sh, tar, httpd, ...), plus
	// BusyboxWebRoot/index.html with BusyboxIndex as its content, so a
	// container can serve a file that came from its image.
	BusyboxImage = "exec-reaper.local/busybox:1.35"
	// BusyboxWebRoot is the directory of the image's web page.
	BusyboxWebRoot = "/www"
	// BusyboxIndex is the content of BusyboxWebRoot/index.html in the image.
	BusyboxIndex = "served from the image exec-reaper.local/busybox:1.35\n"
)

//go:embed pause/main.go
var pauseSource []byte

// busyboxCandidates are where Debian's busybox-static puts its binary.
var busyboxCandidates = []string{"/bin/busybox", "/usr/bin/busybox"}

// findBusybox returns a static busybox binary.
func findBusybox() (string, error) {
	for _, p := range busyboxCandidates {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no busybox binary at %s (install Debian's busybox-static: hack/node-packages.sh)",
		strings.Join(busyboxCandidates, " or "))
}

// buildImages writes the pause and busybox images as docker-archive
// tarballs into dir and returns their paths.
func buildImages(ctx context.Context, dir string) ([]string, error) {
	pause, err := buildPause(ctx, filepath.Join(dir, "pause-src"))
	if err != nil {
		return nil, err
	}
	pauseTar := filepath.Join(dir, "pause.tar")
	err = writeDockerArchive(pauseTar, PauseImage, []string{"/pause"}, []layerFile{
		{name: "pause", mode: 0o755, data: pause},
	})
	if err != nil {
		return nil, err
	}
	bb, err := findBusybox()
	if err != nil {
		return nil, err
	}
	files, err := busyboxFiles(ctx, bb)
	if err != nil {
		return nil, err
	}
	busyboxTar := filepath.Join(dir, "busybox.tar")
	if err := writeDockerArchive(busyboxTar, BusyboxImage, []string{"sh"}, files); err != nil {
		return nil, err
	}
	return []string{pauseTar, busyboxTar}, nil
}

// buildPause compiles the embedded pause program, static, in its own
// throwaway module (it needs nothing but the standard library), so this
// works from any working directory.
func buildPause(ctx context.Context, dir string) ([]byte, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module pause\n\ngo 1.22\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), pauseSource, 0o644); err != nil {
		return nil, err
	}
	out := filepath.Join(dir, "pause")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOFLAGS=-mod=mod", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the pause image's program (needs the Go toolchain on PATH): %w\n%s", err, b)
	}
	return os.ReadFile(out)
}

// busyboxFiles returns the busybox binary as /bin/busybox, a symlink to it
// for every applet it lists, the directories a shell expects, and the web
// page.
func busyboxFiles(ctx context.Context, bin string) ([]layerFile, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, bin, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", bin, err)
	}
	files := []layerFile{
		{name: "bin/", mode: 0o755}, {name: "usr/", mode: 0o755}, {name: "usr/bin/", mode: 0o755},
		{name: "sbin/", mode: 0o755}, {name: "usr/sbin/", mode: 0o755},
		{name: "etc/", mode: 0o755}, {name: "root/", mode: 0o700}, {name: "tmp/", mode: 0o1777},
		{name: "var/", mode: 0o755}, {name: "proc/", mode: 0o555}, {name: "sys/", mode: 0o555}, {name: "dev/", mode: 0o755},
		{name: "bin/busybox", mode: 0o755, data: data},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnobody:x:65534:\n")},
		{name: strings.TrimPrefix(BusyboxWebRoot, "/") + "/", mode: 0o755},
		{name: strings.TrimPrefix(BusyboxWebRoot, "/") + "/index.html", mode: 0o644, data: []byte(BusyboxIndex)},
	}
	seen := map[string]bool{"bin/busybox": true}
	for _, applet := range strings.Fields(string(out)) {
		applet = strings.TrimPrefix(applet, "/")
		if seen[applet] || strings.Contains(applet, "..") {
			continue
		}
		seen[applet] = true
		files = append(files, layerFile{name: applet, mode: 0o777, link: "/bin/busybox"})
	}
	return files, nil
}

// layerFile is one entry of an image layer: a directory (name ends in
// "/"), a symlink (link set) or a regular file.
type layerFile struct {
	name string
	mode int64
	data []byte
	link string
}

// writeDockerArchive writes a one-layer image in the format of `docker
// save`, which `ctr images import` reads: manifest.json, the config and the
// layer tar.
func writeDockerArchive(path, ref string, cmd []string, files []layerFile) error {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	// Parents before children, so every directory exists in order.
	sort.SliceStable(files, func(i, j int) bool { return files[i].name < files[j].name })
	epoch := time.Unix(0, 0)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case strings.HasSuffix(f.name, "/"):
			h.Typeflag = tar.TypeDir
		case f.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.data); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	diffID := sha256.Sum256(layer.Bytes())
	layerID := hex.EncodeToString(diffID[:])
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config": map[string]any{
			"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Cmd": cmd,
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerID}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{ref},
		"Layers":   []string{layerID + "/layer.tar"},
	}})
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	out := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		data []byte
	}{
		{layerID + "/layer.tar", layer.Bytes()},
		{configName, config},
		{"manifest.json", manifest},
	} {
		if err := out.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := out.Write(e.data); err != nil {
			return err
		}
	}
	if err := out.Close(); err != nil {
		return err
	}
	return f.Close()
}
