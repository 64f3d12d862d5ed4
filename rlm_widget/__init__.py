"""rlm_widget: the live agent-tree widget (anywidget) and run viewer."""
