"""Deployment: the container image (Containerfile), Kubernetes manifests (k8s/) and what runs in the pod."""
