"""Running the product: the drift monitor, the PR review report and the versioned dataset CLI."""
