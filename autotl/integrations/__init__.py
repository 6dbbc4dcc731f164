"""Where users' other tools are: MLflow tracking and its model registry (``mlflow``), optuna-dashboard (``dashboard``).

Each needs an optional extra (``autotl[mlflow]``, ``autotl[dashboard]``) and says
so in one line when it is missing; nothing here is imported by the search itself,
which calls an integration only through the event hook the API hands it.
"""
