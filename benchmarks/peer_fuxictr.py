"""Runs a FuxiCTR DeepFM experiment as FuxiCTR's model zoo ``run_expid.py`` runs it, in the
FuxiCTR venv ``bench_fuxictr.py`` makes; prints one JSON object (seconds, peak RSS) and saves
the test predictions.

    python peer_fuxictr.py CONFIG_DIR EXPID PREDICTIONS.npy

The pip package ships FuxiCTR's layers and ``BaseModel`` but not its model zoo: the DeepFM
below is the zoo's (embeddings, FuxiCTR's ``FactorizationMachine`` - its logistic regression
and pairwise part - plus an MLP over the flattened embeddings), built from those layers.
"""

import json
import logging
import os
import resource
import sys
import time

import numpy as np

started = time.perf_counter()
from fuxictr.features import FeatureMap  # noqa: E402
from fuxictr.preprocess import FeatureProcessor, build_dataset  # noqa: E402
from fuxictr.pytorch.dataloaders import RankDataLoader  # noqa: E402
from fuxictr.pytorch.layers import FactorizationMachine, FeatureEmbedding, MLP_Block  # noqa: E402
from fuxictr.pytorch.models import BaseModel  # noqa: E402
from fuxictr.pytorch.torch_utils import seed_everything  # noqa: E402
from fuxictr.utils import load_config  # noqa: E402


class DeepFM(BaseModel):
    def __init__(self, feature_map, model_id="DeepFM", gpu=-1, learning_rate=1e-3,
                 embedding_dim=10, hidden_units=(64, 64, 64), hidden_activations="ReLU",
                 net_dropout=0, batch_norm=False, embedding_regularizer=None,
                 net_regularizer=None, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.fm = FactorizationMachine(feature_map)
        self.mlp = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1,
                             hidden_units=hidden_units, hidden_activations=hidden_activations,
                             output_activation=None, dropout_rates=net_dropout,
                             batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        feature_emb = self.embedding_layer(X)
        y_pred = self.fm(X, feature_emb) + self.mlp(feature_emb.flatten(start_dim=1))
        return {"y_pred": self.output_activation(y_pred)}


def main() -> None:
    logging.disable(logging.INFO)  # (FuxiCTR's and ray's progress lines)
    config_dir, expid, out = sys.argv[1:4]
    params = load_config(config_dir, expid)
    params["gpu"], params["verbose"] = -1, 0
    seed_everything(seed=params["seed"])
    os.makedirs(os.path.join(params["model_root"], params["dataset_id"]), exist_ok=True)
    data_dir = os.path.join(params["data_root"], params["dataset_id"])
    encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(
        encoder, **params)
    feature_map = FeatureMap(params["dataset_id"], data_dir)
    feature_map.load(os.path.join(data_dir, "feature_map.json"), params)
    model = DeepFM(feature_map, **params)
    train, valid = RankDataLoader(feature_map, stage="train", **params)
    model.fit(train, validation_data=valid, **params)
    fitted = time.perf_counter()
    test = RankDataLoader(feature_map, stage="test", **params)
    np.save(out, model.predict(test))
    print(json.dumps({"seconds": fitted - started, "epochs": model._epoch_index + 1,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
