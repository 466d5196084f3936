/* Vision-language models (Qwen2.5-VL): the hooks the text model's load, step and trainable list
 * call. A text-only model passes through every one of them unchanged. */
#ifndef FINCH_CORE_MODEL_VL_H
#define FINCH_CORE_MODEL_VL_H

#include "core/model.h"

/* Loads the vision tower (vision_config of dir/config.json, the visual.* tensors of set) and names
 * the text model's tensors as transformers 5 does (model.language_model.*), whichever naming the
 * checkpoint used. */
int finch_vl_load(finch_model *m, const st_set *set, const char *dir);
void finch_vl_free(finch_model *m);

/* Checks the batch's images against the model and the image tokens of input_ids. For a
 * vision-language model, computes the multimodal RoPE position ids [3, batch * seq_len] and
 * points *positions at them (arena memory); for a text model, refuses images and leaves it. */
int finch_vl_positions(finch_model *m, const finch_batch *b, finch_dptr *positions);

/* Runs the vision tower over the batch's images and writes the merged features over the rows of
 * x0 (the token embeddings) that hold image tokens, in order. No-op without images. x0 gets a
 * gradient node when the tower has trainable parameters. */
int finch_vl_embed_images(finch_model *m, finch_graph *g, const finch_batch *b, int train, finch_tensor *x0);

/* target_modules for adapter_config.json: "all-linear" on a vision-language model adapts the
 * language model only, and the leaf-name list PEFT would otherwise save also names the tower's
 * gate/up/down projections; it is replaced (in *json, a JSON value) by PEFT's regular-expression
 * form "^(?!.*visual).*\.(q_proj|...)$". Other cases are left as they are. */
int finch_vl_lora_targets(const finch_model *m, const char *targets, char **json);

/* Calls fn(m, param, owning linear module or NULL, 0) for each vision-tower parameter in module
 * order (full fine-tuning's trainables); fn may be NULL. Returns how many there are (0: none). */
typedef void (*finch_vl_param_fn)(finch_model *m, finch_param *p, const finch_linear_module *owner, int perm_rows);
int finch_vl_each_param(finch_model *m, finch_vl_param_fn fn);

#endif
