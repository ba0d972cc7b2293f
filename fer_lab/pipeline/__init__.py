"""Pipeline: the shared notebook setup, the papermill runner, experiment sets and the HTML report."""
