"""A built model folder and how to run it (../shared/DESIGN.md): what a stage publishes, evaluate
measures and serving runs is the same folder opened by the same code.

- folder.py: the folder itself: manifest (chatforge.json), family, checks, `ModelFolderError`,
  `load_torch`, the one way a folder's weights become a torch model, and `publish_folder`, the one
  way a stage writes a model folder
- conversation.py: `Conversation` and tokenising chats (chat template, assistant-only labels)
- slots.py: slot placeholders (order numbers, cities ...) encoded into prompts, decoded from answers
- device.py: where models run (accelerator or CPU, ONNX Runtime execution providers)
- decode.py: decoding, torch and ONNX (`load_generator`, `Generator.logprobs`, `OnnxCausalLM`)
- backends.py: the backend protocol and the intent-classifier backend (`OnnxClassifier`)
- quality.py: `Answer`, the one answer type, and the one answer-quality path (samples, full answers,
  scores, perplexity, retention)
  and the one latency definition (`request_latency`)
- retrieval.py, index.py, encoder.py, hybrid.py: the retrieval baseline and retrieval in the loop
"""
