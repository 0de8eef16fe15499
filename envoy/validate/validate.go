// Package validate checks an Envoy config proto the way Envoy does before
// accepting it: the protoc-gen-validate rules of the message itself and,
// because those stop at google.protobuf.Any, of every message packed in an
// Any at any depth (typed_config, typed_extension_protocol_options, ...).
// The xDS control plane runs it on every resource before publishing, so a
// config Envoy would NACK is refused with an error naming the field.
//
// An Any's type is resolved from protoregistry.GlobalTypes, so the binary
// must link the Go package of every extension it packs; packing a message
// already does that.
package validate

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
)

// allValidator is the method protoc-gen-validate generates on every Envoy
// message: it checks all rules and returns every violation.
type allValidator interface{ ValidateAll() error }

// Message validates m and everything packed inside it. The error joins every
// problem found, each prefixed with the path to the offending message.
func Message(m proto.Message) error {
	if m == nil {
		return errors.New("validate: nil message")
	}
	var errs []error
	check(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().FullName()), &errs)
	return errors.Join(errs...)
}

// check runs m's own rules (which cover its nested messages) and then looks
// for Any fields below it, whose contents the generated rules never see.
func check(m protoreflect.Message, path string, errs *[]error) {
	if v, ok := m.Interface().(allValidator); ok {
		if err := v.ValidateAll(); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	walkAnys(m, path, errs)
}

func walkAnys(m protoreflect.Message, path string, errs *[]error) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		checkAny(a, path, errs)
		return
	}
	// Fields the type does not define can only come from decoding an Any
	// packed from a different (or newer) definition; Envoy rejects them.
	if unknown := m.GetUnknown(); len(unknown) > 0 {
		*errs = append(*errs, fmt.Errorf("%s: %d bytes of fields %s does not define", path, len(unknown), m.Descriptor().FullName()))
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				walkAnys(mv.Message(), fmt.Sprintf("%s[%s]", name, k.String()), errs)
				return true
			})
		case fd.IsList():
			if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
				return true
			}
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walkAnys(l.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i), errs)
			}
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			walkAnys(v.Message(), name, errs)
		}
		return true
	})
}

func checkAny(a *anypb.Any, path string, errs *[]error) {
	typeName := a.GetTypeUrl()
	if i := strings.LastIndexByte(typeName, '/'); i >= 0 {
		typeName = typeName[i+1:]
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(typeName))
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s: Any type %q is not known to this binary: %w", path, a.GetTypeUrl(), err))
		return
	}
	inner := mt.New().Interface()
	if err := proto.Unmarshal(a.GetValue(), inner); err != nil {
		*errs = append(*errs, fmt.Errorf("%s: Any of type %s does not decode: %w", path, typeName, err))
		return
	}
	check(inner.ProtoReflect(), fmt.Sprintf("%s(%s)", path, typeName), errs)
}
