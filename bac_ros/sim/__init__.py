"""The bundled task: a planar 3-link arm that reaches around an obstacle to a target disc,
either side (``arm``); a scripted expert whose demonstrations are bimodal in that side only
(``expert``); demonstrations in a replay-buffer layout and the training-window sampler
(``dataset``). These three are numpy + OpenCV only, so data can be made without torch or ROS;
``train`` and ``evaluate`` build on them.
"""
