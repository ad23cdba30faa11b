"""A model described as Keras' model.summary() prints it, so the lab's tables can be set beside ours."""

from mnistlab.spec import Architecture, Hyperparameters


def summary(arch: Architecture, hyperparameters: Hyperparameters) -> str:
    """A table like Keras' model.summary(): layer, output shape, parameters, totals."""
    rows = []
    if arch.crop:  # Keras would say Cropping2D then Flatten: no parameters
        rows.append((f"cropping (Crop, {arch.crop} px each side)", f"(None, {arch.features})", 0))
    for index, (n_in, n_out) in enumerate(arch.shapes):
        rate = hyperparameters.input_dropout if index == 0 else hyperparameters.dropout
        if rate:
            rows.append((f"dropout_{index} (Dropout, rate {rate:g})", f"(None, {n_in})", 0))
        act = arch.activation if index < len(arch.hidden) else "softmax"
        rows.append((f"dense_{index} (Dense, {act})", f"(None, {n_out})", n_in * n_out + n_out))
    widths = (max(34, *(len(r[0]) for r in rows)) + 2, 16, 12)
    rule = "-" * sum(widths)
    lines = [
        rule,
        f"{'Layer (type)':<{widths[0]}}{'Output Shape':<{widths[1]}}{'Param #':>{widths[2]}}",
        "=" * len(rule),
    ]
    lines += [f"{name:<{widths[0]}}{shape:<{widths[1]}}{count:>{widths[2]},}" for name, shape, count in rows]
    lines += [
        "=" * len(rule),
        f"Total params: {arch.num_params:,}",
        f"Trainable params: {arch.num_params:,}",
        "Non-trainable params: 0",
        rule,
    ]
    return "\n".join(lines) + "\n"
