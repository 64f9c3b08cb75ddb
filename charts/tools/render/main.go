// Renders a Helm chart the way `helm template` does, for CI on machines without Helm (Debian has
// none): Go text/template with sprig's functions, plus Helm's include, tpl, toYaml, required and
// .Files.Get; values.yaml merged with -f files. Built from Debian packages only (golang-go,
// golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v3-dev).
//
//	go run main.go <chart-dir> [-f values.yaml ...]
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

func load(path string) map[string]interface{} {
	out := map[string]interface{}{}
	data, err := os.ReadFile(path)
	if err != nil {
		fail("reading %s: %v", path, err)
	}
	if err := yaml.Unmarshal(data, &out); err != nil {
		fail("parsing %s: %v", path, err)
	}
	return out
}

// merge lays `over` onto `base`, maps recursively, as Helm merges values files.
func merge(base, over map[string]interface{}) map[string]interface{} {
	for k, v := range over {
		if vm, ok := v.(map[string]interface{}); ok {
			if bm, ok := base[k].(map[string]interface{}); ok {
				base[k] = merge(bm, vm)
				continue
			}
		}
		base[k] = v
	}
	return base
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "render: "+format+"\n", args...)
	os.Exit(1)
}

type files struct{ dir string }

func (f files) Get(name string) string {
	data, err := os.ReadFile(filepath.Join(f.dir, name))
	if err != nil {
		fail(".Files.Get %s: %v", name, err)
	}
	return string(data)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: render <chart-dir> [-f values.yaml ...]")
	}
	dir := os.Args[1]
	values := load(filepath.Join(dir, "values.yaml"))
	for i := 2; i+1 < len(os.Args); i += 2 {
		if os.Args[i] != "-f" {
			fail("unknown argument %s", os.Args[i])
		}
		values = merge(values, load(os.Args[i+1]))
	}
	chart := load(filepath.Join(dir, "Chart.yaml"))
	top := map[string]interface{}{
		"Values":  values,
		"Chart":   map[string]interface{}{"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
		"Release": map[string]interface{}{"Name": "carga", "Namespace": "default", "Service": "Helm"},
		"Files":   files{dir},
	}

	root := template.New("chart")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = func(v interface{}) string {
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(v); err != nil {
			fail("toYaml: %v", err)
		}
		return strings.TrimSuffix(buf.String(), "\n")
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["required"] = func(message string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", message)
		}
		return v, nil
	}
	root.Funcs(funcs).Option("missingkey=zero")

	paths, _ := filepath.Glob(filepath.Join(dir, "templates", "*"))
	sort.Strings(paths)
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			fail("%v", err)
		}
		if _, err := root.New(filepath.Base(path)).Parse(string(data)); err != nil {
			fail("parsing %s: %v", path, err)
		}
	}
	for _, path := range paths {
		name := filepath.Base(path)
		if strings.HasPrefix(name, "_") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			continue
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, top); err != nil {
			fail("rendering %s: %v", name, err)
		}
		if strings.TrimSpace(buf.String()) == "" {
			continue
		}
		fmt.Printf("---\n# Source: %s/templates/%s\n%s\n", chart["name"], name, strings.TrimSpace(buf.String()))
	}
}
