"""The spec layer: YAML documents with located errors, growth specs, recipes, data sections and their JSON
schemas. Depends only on the base modules (errors)."""
