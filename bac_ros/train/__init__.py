"""DP-T training on any task's demonstrations (Chi et al.'s recipe), and distillation of the
bundled image policy. Tasks never import this package; training imports the tasks it needs."""
