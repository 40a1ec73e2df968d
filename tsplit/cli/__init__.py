"""The `tsplit` operator CLI: reads come straight from etcd, changes go through the control plane."""
