"""Your own models and datasets for the pipeline: params.yaml names them as `user.mymodule:factory`."""
