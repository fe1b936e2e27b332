"""``python -m rlvf.eval --config X.yaml``: the evaluation stage (implemented in rlvf.evaluate)."""
from rlvf.evaluate import main

if __name__ == "__main__":
    main()
