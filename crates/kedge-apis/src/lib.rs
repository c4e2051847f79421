//! KubeEdge API types: component configuration files and CRDs.
