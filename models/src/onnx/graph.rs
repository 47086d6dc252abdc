//! The graph layer: the questions every pass asks of a `GraphProto`, answered
//! in one place.
//!
//! * [`GraphIndex`] — initializers by name, the node producing each value,
//!   the nodes reading it, and the inputs a caller feeds;
//! * [`NodeExt`] — a node's attributes by name and type, so no pass reads
//!   `AttributeProto` fields by hand;
//! * [`NameAllocator`] — fresh value and node names that collide with
//!   nothing in the graph, for passes that add nodes and initializers;
//! * [`read_counts`] — how often each value is read, nested bodies included,
//!   for passes that remove or copy what they rewrite.
//!
//! Everything here reads the graph as it is: an index describes the graph it
//! was built from and must be rebuilt after the graph is edited.

use std::collections::{HashMap, HashSet};

use super::proto::{AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto};

/// The graph inputs a caller must feed: declared inputs that are not also
/// initializers (older exporters list every weight as an input too).
pub fn runtime_inputs(graph: &GraphProto) -> impl Iterator<Item = &ValueInfoProto> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    graph
        .input
        .iter()
        .filter(move |i| !initializers.contains(i.name()))
}

/// The graph's initializers by name (a valid graph has no duplicates; with
/// duplicates the last one is kept).
pub fn initializers_by_name(graph: &GraphProto) -> HashMap<&str, &TensorProto> {
    graph.initializer.iter().map(|t| (t.name(), t)).collect()
}

/// Each initializer's position in `graph.initializer`, by name, for passes
/// that edit initializers in place (an index of references would hold the
/// graph borrowed). With duplicate names the last position is kept.
pub fn initializer_positions(graph: &GraphProto) -> HashMap<String, usize> {
    graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name().to_string(), i))
        .collect()
}

/// How many times each value name is read: by the nodes of `graph` and of
/// every nested subgraph (`If`/`Loop`/`Scan` bodies capture outer values),
/// and by the graph's outputs. A value that is absent is read nowhere.
pub fn read_counts(graph: &GraphProto) -> HashMap<String, usize> {
    fn walk(graph: &GraphProto, reads: &mut HashMap<String, usize>) {
        for node in &graph.node {
            for input in &node.input {
                *reads.entry(input.clone()).or_default() += 1;
            }
            for sub in node.subgraphs() {
                walk(sub, reads);
            }
        }
        for output in &graph.output {
            *reads.entry(output.name().to_string()).or_default() += 1;
        }
    }
    let mut reads = HashMap::new();
    walk(graph, &mut reads);
    reads
}

/// Lookups over one graph's top level, built once: initializers by name,
/// the producer and the consumers of each value.
///
/// Node references are indices into `graph.node`. Consumers are listed one
/// entry per input slot, in node order, so a node that reads a value twice
/// (`Mul(x, x)`) appears twice and is not that value's only consumer. Empty
/// names (omitted optional inputs and outputs) are not indexed. Nested
/// subgraphs are not indexed either; [`read_counts`] covers them.
#[derive(Debug)]
pub struct GraphIndex<'g> {
    graph: &'g GraphProto,
    initializers: HashMap<&'g str, &'g TensorProto>,
    producers: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
}

impl<'g> GraphIndex<'g> {
    /// Indexes `graph`.
    pub fn new(graph: &'g GraphProto) -> Self {
        let mut producers: HashMap<&str, usize> = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for input in node.input.iter().filter(|v| !v.is_empty()) {
                consumers.entry(input.as_str()).or_default().push(i);
            }
            for output in node.output.iter().filter(|v| !v.is_empty()) {
                // A valid graph assigns each value once; the first
                // assignment is the one later nodes can have seen.
                producers.entry(output.as_str()).or_insert(i);
            }
        }
        GraphIndex {
            graph,
            initializers: initializers_by_name(graph),
            producers,
            consumers,
        }
    }

    /// The graph this index describes.
    pub fn graph(&self) -> &'g GraphProto {
        self.graph
    }

    /// Node `i` of the graph.
    ///
    /// # Panics
    /// When `i` is not an index this `GraphIndex` handed out (out of range).
    pub fn node(&self, i: usize) -> &'g NodeProto {
        &self.graph.node[i]
    }

    /// The initializer called `name`.
    pub fn initializer(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializers.get(name).copied()
    }

    /// Whether `name` is an initializer (a constant, not a computed value).
    pub fn is_initializer(&self, name: &str) -> bool {
        self.initializers.contains_key(name)
    }

    /// The index of the node that outputs `value`; `None` for graph inputs,
    /// initializers and unknown names.
    pub fn producer(&self, value: &str) -> Option<usize> {
        self.producers.get(value).copied()
    }

    /// The nodes reading `value`, one entry per input slot.
    pub fn consumers(&self, value: &str) -> &[usize] {
        self.consumers.get(value).map_or(&[], Vec::as_slice)
    }

    /// The node reading `value` when exactly one input slot of the graph
    /// reads it (graph outputs do not count: callers that fuse through a
    /// value check [`read_counts`] or the outputs themselves).
    pub fn only_consumer(&self, value: &str) -> Option<usize> {
        match self.consumers(value) {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// The graph inputs a caller must feed (see [`runtime_inputs`]).
    pub fn runtime_inputs(&self) -> impl Iterator<Item = &'g ValueInfoProto> + '_ {
        self.graph
            .input
            .iter()
            .filter(|i| !self.is_initializer(i.name()))
    }
}

/// Typed access to a node's attributes by name.
///
/// ONNX leaves an attribute out when it has its default value, so every
/// getter returns `None` for an absent attribute and the caller applies the
/// operator's default (`transB` 0, `alpha` 1.0, …) or reports the missing
/// attribute in its own error, naming the node. No method fails or panics:
/// a getter asked for a type the attribute does not carry returns `None`
/// (scalars) or the empty list it holds (lists).
pub trait NodeExt {
    /// The attribute called `name`, whatever its type.
    ///
    /// Errors: none; `None` when the node has no such attribute (the first
    /// one counts if a malformed node repeats a name).
    fn attr(&self, name: &str) -> Option<&AttributeProto>;

    /// The attribute called `name`, for passes that rewrite it in place.
    ///
    /// Errors: none; `None` as for [`NodeExt::attr`].
    fn attr_mut(&mut self, name: &str) -> Option<&mut AttributeProto>;

    /// An `INT` attribute.
    ///
    /// Errors: none; `None` when absent or when it carries no integer.
    fn attr_int(&self, name: &str) -> Option<i64> {
        self.attr(name).and_then(|a| a.i)
    }

    /// An `INTS` attribute.
    ///
    /// Errors: none; `None` only when absent (an empty list is `Some`).
    fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }

    /// A `FLOAT` attribute.
    ///
    /// Errors: none; `None` when absent or when it carries no float.
    fn attr_float(&self, name: &str) -> Option<f32> {
        self.attr(name).and_then(|a| a.f)
    }

    /// A `FLOATS` attribute.
    ///
    /// Errors: none; `None` only when absent (an empty list is `Some`).
    fn attr_floats(&self, name: &str) -> Option<&[f32]> {
        self.attr(name).map(|a| a.floats.as_slice())
    }

    /// A `STRING` attribute as text.
    ///
    /// Errors: none; `None` when absent, when it carries no string, or when
    /// its bytes are not UTF-8 (ONNX strings are bytes; callers that need
    /// other bytes read [`NodeExt::attr`]'s `s`).
    fn attr_string(&self, name: &str) -> Option<&str> {
        self.attr(name)
            .and_then(|a| a.s.as_deref())
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// A `TENSOR` attribute (`Constant`'s `value`).
    ///
    /// Errors: none; `None` when absent or when it carries no tensor.
    fn attr_tensor(&self, name: &str) -> Option<&TensorProto> {
        self.attr(name).and_then(|a| a.t.as_ref())
    }

    /// The node's subgraphs: `If` branches, `Loop`/`Scan` bodies, in
    /// attribute order.
    ///
    /// Errors: none; empty for a node without control flow.
    fn subgraphs(&self) -> impl Iterator<Item = &GraphProto>;

    /// The node's subgraphs, for passes that edit them in place.
    ///
    /// Errors: none; empty for a node without control flow.
    fn subgraphs_mut(&mut self) -> impl Iterator<Item = &mut GraphProto>;

    /// Whether the node carries any subgraph (control flow).
    ///
    /// Errors: none.
    fn has_subgraphs(&self) -> bool {
        self.subgraphs().next().is_some()
    }
}

impl NodeExt for NodeProto {
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name() == name)
    }

    fn attr_mut(&mut self, name: &str) -> Option<&mut AttributeProto> {
        self.attribute.iter_mut().find(|a| a.name() == name)
    }

    fn subgraphs(&self) -> impl Iterator<Item = &GraphProto> {
        self.attribute
            .iter()
            .flat_map(|a| a.g.iter().chain(&a.graphs))
    }

    fn subgraphs_mut(&mut self) -> impl Iterator<Item = &mut GraphProto> {
        self.attribute
            .iter_mut()
            .flat_map(|a| a.g.iter_mut().chain(a.graphs.iter_mut()))
    }
}

/// Hands out names no value, initializer, node or graph input/output of a
/// graph (or of its nested subgraphs) uses, nor any name handed out before.
///
/// The rule: `base` when free, else `base_1`, `base_2`, … — the one the
/// quantizers have always used, so their outputs keep their names (the base
/// names themselves follow ONNX Runtime's, `W_quantized`, `W_scale`, …).
/// Node names and value names share one pool: ONNX keeps them apart, but
/// some tools do not, and a name unique in both is never ambiguous. Names
/// of nested subgraphs count too: bodies see outer values by name, so a new
/// outer value must not coincide with a body's own.
#[derive(Debug, Clone, Default)]
pub struct NameAllocator {
    taken: HashSet<String>,
}

impl NameAllocator {
    /// An allocator that avoids every name `graph` uses.
    pub fn new(graph: &GraphProto) -> Self {
        let mut allocator = NameAllocator::default();
        allocator.take_graph(graph);
        allocator
    }

    fn take_graph(&mut self, graph: &GraphProto) {
        let taken = &mut self.taken;
        for v in graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
        {
            taken.insert(v.name().to_string());
        }
        taken.extend(graph.initializer.iter().map(|t| t.name().to_string()));
        taken.extend(
            graph
                .sparse_initializer
                .iter()
                .filter_map(|s| s.values.as_ref())
                .map(|t| t.name().to_string()),
        );
        for node in &graph.node {
            taken.extend(node.input.iter().cloned());
            taken.extend(node.output.iter().cloned());
            if let Some(name) = &node.name {
                taken.insert(name.clone());
            }
        }
        for sub in graph.node.iter().flat_map(|n| n.subgraphs()) {
            self.take_graph(sub);
        }
    }

    /// `base`, or `base_N` with the smallest `N` ≥ 1 that is free; the name
    /// returned is taken from then on.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.taken.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.taken.insert(name.clone());
        name
    }

    /// Whether `name` is in use (in the graph or handed out).
    pub fn is_taken(&self, name: &str) -> bool {
        self.taken.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::{attr_float, attr_graph, attr_int, attr_ints, node, tensor_raw};

    fn graph() -> GraphProto {
        let mut gemm = node("g", "Gemm", &["x", "W", "b"], &["y"]);
        gemm.attribute = vec![
            attr_int("transB", 1),
            attr_float("alpha", 0.5),
            attr_ints("perm", &[]),
        ];
        GraphProto {
            node: vec![gemm, node("sq", "Mul", &["y", "y"], &["z"])],
            initializer: vec![
                tensor_raw("W", 1, &[2, 2], vec![0; 16]),
                tensor_raw("b", 1, &[2], vec![0; 8]),
            ],
            input: vec![
                crate::onnx::build::value_info("x", 1, &[None, Some(2)]),
                crate::onnx::build::value_info("W", 1, &[Some(2), Some(2)]),
            ],
            output: vec![crate::onnx::build::value_info("z", 1, &[None, Some(2)])],
            ..Default::default()
        }
    }

    #[test]
    fn index_answers_producers_consumers_and_inputs() {
        let g = graph();
        let index = GraphIndex::new(&g);
        assert!(index.is_initializer("W") && !index.is_initializer("x"));
        assert_eq!(index.producer("y"), Some(0));
        assert_eq!(index.producer("x"), None);
        assert_eq!(index.consumers("y"), &[1, 1]);
        assert_eq!(index.only_consumer("y"), None, "Mul(y, y) reads y twice");
        assert_eq!(index.only_consumer("W"), Some(0));
        let fed: Vec<&str> = index.runtime_inputs().map(|i| i.name()).collect();
        assert_eq!(fed, ["x"], "W is an initializer listed as an input");
        assert_eq!(
            runtime_inputs(&g).map(|i| i.name()).collect::<Vec<_>>(),
            fed
        );
        assert_eq!(initializer_positions(&g)["b"], 1);
        let reads = read_counts(&g);
        assert_eq!((reads["y"], reads["z"], reads.get("q")), (2, 1, None));
    }

    #[test]
    fn attributes_by_name_and_type() {
        let g = graph();
        let gemm = &g.node[0];
        assert_eq!(gemm.attr_int("transB"), Some(1));
        assert_eq!(gemm.attr_int("transA"), None);
        assert_eq!(gemm.attr_int("alpha"), None, "a float is not an int");
        assert_eq!(gemm.attr_float("alpha"), Some(0.5));
        assert_eq!(gemm.attr_ints("perm"), Some(&[][..]));
        assert_eq!(gemm.attr_ints("axes"), None);
        assert!(!gemm.has_subgraphs());
    }

    #[test]
    fn allocator_avoids_every_name_and_its_own() {
        let mut g = graph();
        let body = GraphProto {
            node: vec![node("inner", "Identity", &["x"], &["W_q"])],
            ..Default::default()
        };
        let mut branch = node("if", "If", &["c"], &["o"]);
        branch.attribute = vec![attr_graph("then_branch", body)];
        assert!(branch.has_subgraphs());
        branch
            .subgraphs_mut()
            .for_each(|b| b.name = Some("then".into()));
        assert_eq!(
            branch.subgraphs().map(|b| b.name()).collect::<Vec<_>>(),
            ["then"]
        );
        g.node.push(branch);
        let mut names = NameAllocator::new(&g);
        assert_eq!(names.fresh("W_s"), "W_s");
        assert_eq!(names.fresh("W_s"), "W_s_1", "handed-out names are taken");
        assert_eq!(names.fresh("W_q"), "W_q_1", "subgraph values are taken");
        assert_eq!(names.fresh("g"), "g_1", "node names are taken");
        assert_eq!(names.fresh("W"), "W_1");
        assert!(names.is_taken("W_1") && !names.is_taken("W_2"));
    }
}
