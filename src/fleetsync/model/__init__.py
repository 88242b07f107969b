"""Pure domain model: resource types, selectors, Kubernetes Status errors. No I/O."""
