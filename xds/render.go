package xds

import (
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
)

// RenderYAML renders resources the way Envoy's config dump and static
// bootstrap spell them: a "resources" list, each entry an Any with its
// "@type", in proto JSON field names.
func RenderYAML(resources []types.Resource) ([]byte, error) {
	list := make([]*yaml.Node, 0, len(resources))
	for _, r := range resources {
		a, err := anypb.New(r)
		if err != nil {
			return nil, fmt.Errorf("render %T: %w", r, err)
		}
		j, err := protojson.Marshal(a)
		if err != nil {
			return nil, fmt.Errorf("render %T: %w", r, err)
		}
		// JSON is YAML: parse it into a node to re-emit it as block YAML.
		var n yaml.Node
		if err := yaml.Unmarshal(j, &n); err != nil {
			return nil, fmt.Errorf("render %T: %w", r, err)
		}
		setBlockStyle(&n)
		list = append(list, n.Content[0])
	}
	doc := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		{Kind: yaml.ScalarNode, Value: "resources"},
		{Kind: yaml.SequenceNode, Content: list},
	}}
	return yaml.Marshal(doc)
}

func setBlockStyle(n *yaml.Node) {
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		n.Style = 0
	}
	for _, c := range n.Content {
		setBlockStyle(c)
	}
}
