package config

import (
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// fieldPath finds a config path such as xds.listeners[0].routes[2].name at
// the start of a message or after ": ".
var fieldPath = regexp.MustCompile(`(?m)(?:^|: )([a-z_]+(?:\.[A-Za-z0-9_-]+|\[\d+\])*): `)

// WithLines adds "(line N)" after every config path in err's message whose
// node it finds in the YAML source data, so that a refused change points
// at the line to fix. err is returned unchanged when data does not parse.
func WithLines(data []byte, err error) error {
	if err == nil {
		return nil
	}
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil || len(root.Content) == 0 {
		return err
	}
	msg := err.Error()
	var b strings.Builder
	last := 0
	for _, m := range fieldPath.FindAllStringSubmatchIndex(msg, -1) {
		path := msg[m[2]:m[3]]
		line := lineOf(root.Content[0], path)
		if line == 0 {
			continue
		}
		b.WriteString(msg[last:m[3]])
		b.WriteString(" (line " + strconv.Itoa(line) + ")")
		last = m[3]
	}
	if last == 0 {
		return err
	}
	b.WriteString(msg[last:])
	return lineError{msg: b.String(), err: err}
}

type lineError struct {
	msg string
	err error
}

func (e lineError) Error() string { return e.msg }
func (e lineError) Unwrap() error { return e.err }

var pathSegment = regexp.MustCompile(`\[(\d+)\]|\.?([^.\[]+)`)

// lineOf walks path through the YAML tree and returns the line of the
// deepest node it reaches (0 if not even the first step exists), so that a
// missing field points at its parent.
func lineOf(n *yaml.Node, path string) int {
	line := 0
	for _, seg := range pathSegment.FindAllStringSubmatch(path, -1) {
		var next *yaml.Node
		if seg[1] != "" {
			i, _ := strconv.Atoi(seg[1])
			if n.Kind == yaml.SequenceNode && i < len(n.Content) {
				next = n.Content[i]
			}
		} else if n.Kind == yaml.MappingNode {
			for k := 0; k+1 < len(n.Content); k += 2 {
				if n.Content[k].Value == seg[2] {
					next = n.Content[k+1]
					if next.Kind == yaml.ScalarNode {
						next = &yaml.Node{Line: n.Content[k].Line}
					}
					break
				}
			}
		}
		if next == nil {
			return line
		}
		n, line = next, next.Line
	}
	return line
}
