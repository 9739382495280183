"""The region head: where an image is wrong (:mod:`reward.region.head`), its training data from the
raters' marks (:mod:`reward.region.data`), and training and measuring it (:mod:`reward.region.fit`)."""
