//! Graph-level questions every pass asks: which inputs a caller feeds,
//! which initializer a name refers to.

use std::collections::HashMap;

use super::proto::{GraphProto, TensorProto, ValueInfoProto};

/// The graph inputs a caller must feed: declared inputs that are not also
/// initializers (older exporters list every weight as an input too).
pub fn runtime_inputs(graph: &GraphProto) -> impl Iterator<Item = &ValueInfoProto> {
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name()).collect();
    graph
        .input
        .iter()
        .filter(move |i| !initializers.contains(i.name()))
}

/// The graph's initializers by name.
pub fn initializers_by_name(graph: &GraphProto) -> HashMap<&str, &TensorProto> {
    graph.initializer.iter().map(|t| (t.name(), t)).collect()
}
