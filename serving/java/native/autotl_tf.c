/*
 * JNI shim for autotl's Java inference service (class autotl.serving.Native).
 *
 * TensorFlow: load a SavedModel into one TF_Session (and hand its serialized
 * MetaGraphDef to Java, which reads the signatures), look operations up by
 * name, run the session (TF_SessionRun is safe to call from many threads on
 * one session), close it.  Lineage: run one SQL statement with text
 * parameters on SQLite (libsqlite3) or PostgreSQL (libpq) and return the rows
 * as text, so the JDK needs no JDBC driver.
 *
 * Every TF_Status is checked; a failure becomes a Java exception
 * (autotl.serving.TfException with TensorFlow's code and message, or
 * autotl.serving.DbException), and every native resource is released on
 * every path.  Strings cross the boundary as UTF-8 byte arrays (NUL-free for
 * paths and SQL), never as JNI "modified UTF-8".
 */
#include <jni.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <libpq-fe.h>
#include <sqlite3.h>

#include "tensorflow/c/c_api.h"
#include "tensorflow/c/tf_tstring.h"

#define MAX_TAGS 8
#define MAX_IO 16

typedef struct {
  TF_Graph *graph;
  TF_Session *session;
} Model;

/* ------------------------------------------------------------------ errors */

static void throw_named(JNIEnv *env, const char *cls, const char *msg) {
  jclass c = (*env)->FindClass(env, cls);
  if (c != NULL) (*env)->ThrowNew(env, c, msg);
}

static void throw_tf(JNIEnv *env, const TF_Status *status, const char *what) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s: %s", what, TF_Message(status));
  jclass c = (*env)->FindClass(env, "autotl/serving/TfException");
  if (c == NULL) return;
  jmethodID ctor = (*env)->GetMethodID(env, c, "<init>", "(ILjava/lang/String;)V");
  if (ctor == NULL) return;
  jstring jmsg = (*env)->NewStringUTF(env, buf);
  if (jmsg == NULL) return;
  jobject ex = (*env)->NewObject(env, c, ctor, (jint)TF_GetCode(status), jmsg);
  if (ex != NULL) (*env)->Throw(env, (jthrowable)ex);
}

static void throw_db(JNIEnv *env, const char *what, const char *detail) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s: %s", what, detail ? detail : "unknown error");
  size_t n = strlen(buf);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
  throw_named(env, "autotl/serving/DbException", buf);
}

/* A NUL-terminated copy of a Java byte[] (UTF-8), or NULL with an exception pending. */
static char *cstring(JNIEnv *env, jbyteArray bytes) {
  if (bytes == NULL) return NULL;
  jsize n = (*env)->GetArrayLength(env, bytes);
  char *s = malloc((size_t)n + 1);
  if (s == NULL) {
    throw_named(env, "java/lang/OutOfMemoryError", "autotl_tf: out of memory");
    return NULL;
  }
  (*env)->GetByteArrayRegion(env, bytes, 0, n, (jbyte *)s);
  s[n] = '\0';
  if (memchr(s, '\0', (size_t)n) != NULL) {
    free(s);
    throw_named(env, "java/lang/IllegalArgumentException", "autotl_tf: string holds a NUL byte");
    return NULL;
  }
  return s;
}

static jbyteArray jbytes(JNIEnv *env, const char *data, size_t n) {
  if (n > (size_t)INT32_MAX) {
    throw_named(env, "java/lang/IllegalStateException", "autotl_tf: value over 2 GB");
    return NULL;
  }
  jbyteArray a = (*env)->NewByteArray(env, (jsize)n);
  if (a != NULL && n > 0) (*env)->SetByteArrayRegion(env, a, 0, (jsize)n, (const jbyte *)data);
  return a;
}

/* -------------------------------------------------------------- TensorFlow */

JNIEXPORT jstring JNICALL Java_autotl_serving_Native_version(JNIEnv *env, jclass cls) {
  (void)cls;
  return (*env)->NewStringUTF(env, TF_Version());
}

/*
 * load(dir, tags, config, metaGraphOut) -> handle.  `config` is a serialized
 * ConfigProto (may be empty); metaGraphOut[0] receives the MetaGraphDef.
 */
JNIEXPORT jlong JNICALL Java_autotl_serving_Native_load(JNIEnv *env, jclass cls, jbyteArray jdir, jobjectArray jtags,
                                                       jbyteArray jconfig, jobjectArray meta_out) {
  (void)cls;
  jlong result = 0;
  char *dir = NULL;
  char *tags[MAX_TAGS] = {0};
  int ntags = 0;
  void *config = NULL;
  TF_Status *status = TF_NewStatus();
  TF_SessionOptions *opts = TF_NewSessionOptions();
  TF_Buffer *meta = TF_NewBuffer();
  TF_Graph *graph = TF_NewGraph();
  TF_Session *session = NULL;
  Model *model = NULL;

  if ((dir = cstring(env, jdir)) == NULL) goto done;
  ntags = jtags == NULL ? 0 : (*env)->GetArrayLength(env, jtags);
  if (ntags < 1 || ntags > MAX_TAGS) {
    throw_named(env, "java/lang/IllegalArgumentException", "autotl_tf: between 1 and 8 tags");
    ntags = 0;
    goto done;
  }
  for (int i = 0; i < ntags; i++) {
    jbyteArray t = (jbyteArray)(*env)->GetObjectArrayElement(env, jtags, i);
    tags[i] = cstring(env, t);
    (*env)->DeleteLocalRef(env, t);
    if (tags[i] == NULL) goto done;
  }
  jsize config_len = jconfig == NULL ? 0 : (*env)->GetArrayLength(env, jconfig);
  if (config_len > 0) {
    config = malloc((size_t)config_len);
    if (config == NULL) goto oom;
    (*env)->GetByteArrayRegion(env, jconfig, 0, config_len, (jbyte *)config);
    TF_SetConfig(opts, config, (size_t)config_len, status);
    if (TF_GetCode(status) != TF_OK) {
      throw_tf(env, status, "bad session config");
      goto done;
    }
  }
  session = TF_LoadSessionFromSavedModel(opts, NULL, dir, (const char *const *)tags, ntags, graph, meta, status);
  if (TF_GetCode(status) != TF_OK) {
    throw_tf(env, status, "cannot load the SavedModel");
    session = NULL;
    goto done;
  }
  jbyteArray jmeta = jbytes(env, (const char *)meta->data, meta->length);
  if (jmeta == NULL) goto done;
  (*env)->SetObjectArrayElement(env, meta_out, 0, jmeta);
  if ((*env)->ExceptionCheck(env)) goto done;
  model = malloc(sizeof *model);
  if (model == NULL) goto oom;
  model->graph = graph;
  model->session = session;
  result = (jlong)(intptr_t)model;
  graph = NULL;
  session = NULL;
  goto done;
oom:
  throw_named(env, "java/lang/OutOfMemoryError", "autotl_tf: out of memory");
done:
  if (session != NULL) {
    TF_Status *s2 = TF_NewStatus();
    TF_CloseSession(session, s2);
    TF_DeleteSession(session, s2);
    TF_DeleteStatus(s2);
  }
  if (graph != NULL) TF_DeleteGraph(graph);
  TF_DeleteBuffer(meta);
  TF_DeleteSessionOptions(opts);
  TF_DeleteStatus(status);
  free(config);
  for (int i = 0; i < ntags; i++) free(tags[i]);
  free(dir);
  return result;
}

/* operation(handle, name) -> TF_Operation* or 0 if the graph has no such operation. */
JNIEXPORT jlong JNICALL Java_autotl_serving_Native_operation(JNIEnv *env, jclass cls, jlong handle, jbyteArray jname) {
  (void)cls;
  Model *model = (Model *)(intptr_t)handle;
  char *name = cstring(env, jname);
  if (name == NULL) return 0;
  TF_Operation *op = TF_GraphOperationByName(model->graph, name);
  free(name);
  return (jlong)(intptr_t)op;
}

JNIEXPORT void JNICALL Java_autotl_serving_Native_close(JNIEnv *env, jclass cls, jlong handle) {
  (void)cls;
  Model *model = (Model *)(intptr_t)handle;
  if (model == NULL) return;
  TF_Status *status = TF_NewStatus();
  TF_CloseSession(model->session, status);
  int failed = TF_GetCode(status) != TF_OK;
  if (failed) throw_tf(env, status, "cannot close the session");
  TF_DeleteSession(model->session, status);
  if (!failed && TF_GetCode(status) != TF_OK) throw_tf(env, status, "cannot delete the session");
  TF_DeleteGraph(model->graph);
  TF_DeleteStatus(status);
  free(model);
#ifdef __GLIBC__
  /* A model version is closed after a hot reload: hand the freed weights and buffers back to the system,
   * or glibc keeps them in its arenas and the resident memory never shrinks. */
  malloc_trim(0);
#endif
}

/* A TF_STRING tensor owns its TF_TStrings: free each one, then the array, when TensorFlow lets go of it. */
static void free_strings(void *data, size_t len, void *arg) {
  (void)arg;
  TF_TString *s = data;
  for (size_t i = 0; i < len / sizeof(TF_TString); i++) TF_StringDealloc(&s[i]);
  free(data);
}

static int64_t *dims_of(JNIEnv *env, jlongArray jshape, int *ndims, int64_t *count) {
  *ndims = (*env)->GetArrayLength(env, jshape);
  int64_t *dims = calloc((size_t)(*ndims > 0 ? *ndims : 1), sizeof *dims);
  if (dims == NULL) {
    throw_named(env, "java/lang/OutOfMemoryError", "autotl_tf: out of memory");
    return NULL;
  }
  (*env)->GetLongArrayRegion(env, jshape, 0, *ndims, (jlong *)dims);
  *count = 1;
  for (int i = 0; i < *ndims; i++) {
    if (dims[i] < 0 || (dims[i] > 0 && *count > INT64_MAX / dims[i])) {
      free(dims);
      throw_named(env, "java/lang/IllegalArgumentException", "autotl_tf: bad tensor shape");
      return NULL;
    }
    *count *= dims[i];
  }
  return dims;
}

/*
 * A tensor from a Java value: byte[] -> TF_UINT8, float[] -> TF_FLOAT,
 * byte[][] -> TF_STRING; the value's length must match the shape.
 */
static TF_Tensor *to_tensor(JNIEnv *env, jobject value, jlongArray jshape) {
  int ndims;
  int64_t count;
  TF_Tensor *t = NULL;
  int64_t *dims = dims_of(env, jshape, &ndims, &count);
  if (dims == NULL) return NULL;
  jclass bytes_class = (*env)->FindClass(env, "[B");
  jclass floats_class = (*env)->FindClass(env, "[F");
  jclass strings_class = (*env)->FindClass(env, "[[B");
  if (bytes_class == NULL || floats_class == NULL || strings_class == NULL) goto done;
  jsize n = value == NULL ? -1 : (*env)->GetArrayLength(env, (jarray)value);
  if (n != count) {
    throw_named(env, "java/lang/IllegalArgumentException", "autotl_tf: value length does not match the shape");
    goto done;
  }
  if ((*env)->IsInstanceOf(env, value, bytes_class)) {
    t = TF_AllocateTensor(TF_UINT8, dims, ndims, (size_t)count);
    if (t != NULL && count > 0) (*env)->GetByteArrayRegion(env, (jbyteArray)value, 0, n, TF_TensorData(t));
  } else if ((*env)->IsInstanceOf(env, value, floats_class)) {
    t = TF_AllocateTensor(TF_FLOAT, dims, ndims, (size_t)count * sizeof(float));
    if (t != NULL && count > 0) (*env)->GetFloatArrayRegion(env, (jfloatArray)value, 0, n, TF_TensorData(t));
  } else if ((*env)->IsInstanceOf(env, value, strings_class)) {
    size_t len = (size_t)(count > 0 ? count : 1) * sizeof(TF_TString);
    TF_TString *s = malloc(len);
    if (s == NULL) goto done;
    for (jsize i = 0; i < n; i++) TF_StringInit(&s[i]);
    for (jsize i = 0; i < n; i++) {
      jbyteArray item = (jbyteArray)(*env)->GetObjectArrayElement(env, (jobjectArray)value, i);
      if (item == NULL) {
        free_strings(s, (size_t)n * sizeof(TF_TString), NULL);
        throw_named(env, "java/lang/IllegalArgumentException", "autotl_tf: null string in a string tensor");
        goto done;
      }
      jsize m = (*env)->GetArrayLength(env, item);
      jbyte *p = (*env)->GetPrimitiveArrayCritical(env, item, NULL);
      if (p == NULL) {
        free_strings(s, (size_t)n * sizeof(TF_TString), NULL);
        goto done;
      }
      TF_StringCopy(&s[i], (const char *)p, (size_t)m);
      (*env)->ReleasePrimitiveArrayCritical(env, item, p, JNI_ABORT);
      (*env)->DeleteLocalRef(env, item);
    }
    t = TF_NewTensor(TF_STRING, dims, ndims, s, (size_t)n * sizeof(TF_TString), free_strings, NULL);
    if (t == NULL) free_strings(s, (size_t)n * sizeof(TF_TString), NULL);
  } else {
    throw_named(env, "java/lang/IllegalArgumentException", "autotl_tf: inputs are byte[] (uint8), float[] or byte[][] (string)");
    goto done;
  }
  if (t == NULL && !(*env)->ExceptionCheck(env)) throw_named(env, "java/lang/OutOfMemoryError", "autotl_tf: cannot allocate a tensor");
done:
  free(dims);
  return t;
}

/* A Java value from a tensor: float[], byte[] (uint8), int[], long[], double[] or byte[][] (string). */
static jobject from_tensor(JNIEnv *env, TF_Tensor *t) {
  int64_t count = TF_TensorElementCount(t);
  if (count > INT32_MAX) {
    throw_named(env, "java/lang/IllegalStateException", "autotl_tf: output tensor too large");
    return NULL;
  }
  jsize n = (jsize)count;
  void *data = TF_TensorData(t);
  switch (TF_TensorType(t)) {
    case TF_FLOAT: {
      jfloatArray a = (*env)->NewFloatArray(env, n);
      if (a != NULL && n > 0) (*env)->SetFloatArrayRegion(env, a, 0, n, data);
      return a;
    }
    case TF_DOUBLE: {
      jdoubleArray a = (*env)->NewDoubleArray(env, n);
      if (a != NULL && n > 0) (*env)->SetDoubleArrayRegion(env, a, 0, n, data);
      return a;
    }
    case TF_INT32: {
      jintArray a = (*env)->NewIntArray(env, n);
      if (a != NULL && n > 0) (*env)->SetIntArrayRegion(env, a, 0, n, data);
      return a;
    }
    case TF_INT64: {
      jlongArray a = (*env)->NewLongArray(env, n);
      if (a != NULL && n > 0) (*env)->SetLongArrayRegion(env, a, 0, n, data);
      return a;
    }
    case TF_UINT8: {
      jbyteArray a = (*env)->NewByteArray(env, n);
      if (a != NULL && n > 0) (*env)->SetByteArrayRegion(env, a, 0, n, data);
      return a;
    }
    case TF_STRING: {
      jclass bytes_class = (*env)->FindClass(env, "[B");
      if (bytes_class == NULL) return NULL;
      jobjectArray a = (*env)->NewObjectArray(env, n, bytes_class, NULL);
      const TF_TString *s = data;
      for (jsize i = 0; a != NULL && i < n; i++) {
        jbyteArray item = jbytes(env, TF_StringGetDataPointer(&s[i]), TF_StringGetSize(&s[i]));
        if (item == NULL) return NULL;
        (*env)->SetObjectArrayElement(env, a, i, item);
        (*env)->DeleteLocalRef(env, item);
      }
      return a;
    }
    default: {
      char buf[128];
      snprintf(buf, sizeof buf, "autotl_tf: output dtype %d is not supported", (int)TF_TensorType(t));
      throw_named(env, "java/lang/IllegalArgumentException", buf);
      return NULL;
    }
  }
}

/*
 * run(handle, inOps, inIndex, inValues, inShapes, outOps, outIndex) ->
 * Object[2 * outputs]: for each output its shape (long[]) then its values.
 */
JNIEXPORT jobjectArray JNICALL Java_autotl_serving_Native_run(JNIEnv *env, jclass cls, jlong handle, jlongArray jin_ops,
                                                             jintArray jin_index, jobjectArray jin_values,
                                                             jobjectArray jin_shapes, jlongArray jout_ops,
                                                             jintArray jout_index) {
  (void)cls;
  Model *model = (Model *)(intptr_t)handle;
  jobjectArray result = NULL;
  TF_Output inputs[MAX_IO], outputs[MAX_IO];
  TF_Tensor *in_values[MAX_IO] = {0}, *out_values[MAX_IO] = {0};
  jlong ops[MAX_IO];
  jint index[MAX_IO];
  TF_Status *status = TF_NewStatus();
  int nin = (*env)->GetArrayLength(env, jin_ops), nout = (*env)->GetArrayLength(env, jout_ops);
  int nin_ok = 0;

  if (nin > MAX_IO || nout > MAX_IO || nout < 1 || (*env)->GetArrayLength(env, jin_index) != nin ||
      (*env)->GetArrayLength(env, jin_values) != nin || (*env)->GetArrayLength(env, jin_shapes) != nin ||
      (*env)->GetArrayLength(env, jout_index) != nout) {
    throw_named(env, "java/lang/IllegalArgumentException", "autotl_tf: inconsistent run arguments");
    goto done;
  }
  (*env)->GetLongArrayRegion(env, jin_ops, 0, nin, ops);
  (*env)->GetIntArrayRegion(env, jin_index, 0, nin, index);
  for (int i = 0; i < nin; i++) {
    inputs[i].oper = (TF_Operation *)(intptr_t)ops[i];
    inputs[i].index = index[i];
    jobject value = (*env)->GetObjectArrayElement(env, jin_values, i);
    jlongArray shape = (jlongArray)(*env)->GetObjectArrayElement(env, jin_shapes, i);
    in_values[i] = to_tensor(env, value, shape);
    (*env)->DeleteLocalRef(env, value);
    (*env)->DeleteLocalRef(env, shape);
    if (in_values[i] == NULL) goto done;
    nin_ok = i + 1;
  }
  (*env)->GetLongArrayRegion(env, jout_ops, 0, nout, ops);
  (*env)->GetIntArrayRegion(env, jout_index, 0, nout, index);
  for (int i = 0; i < nout; i++) {
    outputs[i].oper = (TF_Operation *)(intptr_t)ops[i];
    outputs[i].index = index[i];
  }

  TF_SessionRun(model->session, NULL, inputs, in_values, nin, outputs, out_values, nout, NULL, 0, NULL, status);
  if (TF_GetCode(status) != TF_OK) {
    throw_tf(env, status, "TensorFlow");
    goto done;
  }
  jclass object_class = (*env)->FindClass(env, "java/lang/Object");
  if (object_class == NULL) goto done;
  jobjectArray out = (*env)->NewObjectArray(env, 2 * nout, object_class, NULL);
  if (out == NULL) goto done;
  for (int i = 0; i < nout; i++) {
    int nd = TF_NumDims(out_values[i]);
    jlong dims[64];
    if (nd > 64) nd = 64;
    for (int d = 0; d < nd; d++) dims[d] = TF_Dim(out_values[i], d);
    jlongArray shape = (*env)->NewLongArray(env, nd);
    if (shape == NULL) goto done;
    (*env)->SetLongArrayRegion(env, shape, 0, nd, dims);
    (*env)->SetObjectArrayElement(env, out, 2 * i, shape);
    (*env)->DeleteLocalRef(env, shape);
    jobject values = from_tensor(env, out_values[i]);
    if (values == NULL) goto done;
    (*env)->SetObjectArrayElement(env, out, 2 * i + 1, values);
    (*env)->DeleteLocalRef(env, values);
  }
  result = out;
done:
  for (int i = 0; i < nin_ok; i++) TF_DeleteTensor(in_values[i]);
  for (int i = 0; i < nout && i < MAX_IO; i++)
    if (out_values[i] != NULL) TF_DeleteTensor(out_values[i]);
  TF_DeleteStatus(status);
  return result;
}

/* ----------------------------------------------------------------- lineage */

/* Collected rows: an array of rows, each an array of byte[] (UTF-8 text, or null for SQL NULL). */
static jobjectArray new_rows(JNIEnv *env, int nrows) {
  jclass row_class = (*env)->FindClass(env, "[[B");
  return row_class == NULL ? NULL : (*env)->NewObjectArray(env, nrows, row_class, NULL);
}

static jobjectArray new_row(JNIEnv *env, int ncols) {
  jclass cell_class = (*env)->FindClass(env, "[B");
  return cell_class == NULL ? NULL : (*env)->NewObjectArray(env, ncols, cell_class, NULL);
}

static char **cstrings(JNIEnv *env, jobjectArray jparams, int *n) {
  *n = jparams == NULL ? 0 : (*env)->GetArrayLength(env, jparams);
  char **params = calloc((size_t)(*n > 0 ? *n : 1), sizeof *params);
  if (params == NULL) {
    throw_named(env, "java/lang/OutOfMemoryError", "autotl_tf: out of memory");
    return NULL;
  }
  for (int i = 0; i < *n; i++) {
    jbyteArray p = (jbyteArray)(*env)->GetObjectArrayElement(env, jparams, i);
    if (p == NULL) continue; /* SQL NULL */
    params[i] = cstring(env, p);
    (*env)->DeleteLocalRef(env, p);
    if (params[i] == NULL) {
      for (int j = 0; j < i; j++) free(params[j]);
      free(params);
      return NULL;
    }
  }
  return params;
}

static void free_cstrings(char **params, int n) {
  if (params == NULL) return;
  for (int i = 0; i < n; i++) free(params[i]);
  free(params);
}

/* sqlite(path, sql, params) -> rows: one statement on an existing database file, waiting up to 30 s for a writer. */
JNIEXPORT jobjectArray JNICALL Java_autotl_serving_Native_sqlite(JNIEnv *env, jclass cls, jbyteArray jpath, jbyteArray jsql,
                                                                jobjectArray jparams) {
  (void)cls;
  jobjectArray result = NULL;
  sqlite3 *db = NULL;
  sqlite3_stmt *stmt = NULL;
  int nparams = 0;
  char *path = cstring(env, jpath);
  char *sql = path == NULL ? NULL : cstring(env, jsql);
  char **params = sql == NULL ? NULL : cstrings(env, jparams, &nparams);
  if (params == NULL) goto done;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
    throw_db(env, "cannot open the SQLite database", db ? sqlite3_errmsg(db) : "out of memory");
    goto done;
  }
  sqlite3_busy_timeout(db, 30000);
  if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK) {
    throw_db(env, "SQLite", sqlite3_errmsg(db));
    goto done;
  }
  for (int i = 0; i < nparams; i++) {
    int rc = params[i] == NULL ? sqlite3_bind_null(stmt, i + 1)
                               : sqlite3_bind_text(stmt, i + 1, params[i], -1, SQLITE_TRANSIENT);
    if (rc != SQLITE_OK) {
      throw_db(env, "SQLite", sqlite3_errmsg(db));
      goto done;
    }
  }
  /* rows are few (a deployment id, a model's lineage records): collect into a growing Java array */
  int cap = 8, nrows = 0, ncols = sqlite3_column_count(stmt);
  jobjectArray rows = new_rows(env, cap);
  if (rows == NULL) goto done;
  for (;;) {
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) {
      throw_db(env, "SQLite", sqlite3_errmsg(db));
      goto done;
    }
    if (nrows == cap) {
      jobjectArray bigger = new_rows(env, cap * 2);
      if (bigger == NULL) goto done;
      for (int i = 0; i < nrows; i++) {
        jobject r = (*env)->GetObjectArrayElement(env, rows, i);
        (*env)->SetObjectArrayElement(env, bigger, i, r);
        (*env)->DeleteLocalRef(env, r);
      }
      (*env)->DeleteLocalRef(env, rows);
      rows = bigger;
      cap *= 2;
    }
    jobjectArray row = new_row(env, ncols);
    if (row == NULL) goto done;
    for (int c = 0; c < ncols; c++) {
      if (sqlite3_column_type(stmt, c) == SQLITE_NULL) continue;
      const unsigned char *text = sqlite3_column_text(stmt, c);
      jbyteArray cell = jbytes(env, (const char *)text, (size_t)sqlite3_column_bytes(stmt, c));
      if (cell == NULL) goto done;
      (*env)->SetObjectArrayElement(env, row, c, cell);
      (*env)->DeleteLocalRef(env, cell);
    }
    (*env)->SetObjectArrayElement(env, rows, nrows++, row);
    (*env)->DeleteLocalRef(env, row);
  }
  result = new_rows(env, nrows);
  for (int i = 0; result != NULL && i < nrows; i++) {
    jobject r = (*env)->GetObjectArrayElement(env, rows, i);
    (*env)->SetObjectArrayElement(env, result, i, r);
    (*env)->DeleteLocalRef(env, r);
  }
done:
  if (stmt != NULL) sqlite3_finalize(stmt);
  if (db != NULL) sqlite3_close(db);
  free_cstrings(params, nparams);
  free(sql);
  free(path);
  return result;
}

/* postgres(conninfo, sql, params) -> rows: one statement ($1, $2, ... placeholders) on a new connection. */
JNIEXPORT jobjectArray JNICALL Java_autotl_serving_Native_postgres(JNIEnv *env, jclass cls, jbyteArray jconninfo,
                                                                  jbyteArray jsql, jobjectArray jparams) {
  (void)cls;
  jobjectArray result = NULL;
  PGconn *conn = NULL;
  PGresult *res = NULL;
  int nparams = 0;
  char *conninfo = cstring(env, jconninfo);
  char *sql = conninfo == NULL ? NULL : cstring(env, jsql);
  char **params = sql == NULL ? NULL : cstrings(env, jparams, &nparams);
  if (params == NULL) goto done;
  conn = PQconnectdb(conninfo);
  if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
    throw_db(env, "cannot connect to PostgreSQL", conn ? PQerrorMessage(conn) : "out of memory");
    goto done;
  }
  res = PQexecParams(conn, sql, nparams, NULL, (const char *const *)params, NULL, NULL, 0);
  ExecStatusType st = res == NULL ? PGRES_FATAL_ERROR : PQresultStatus(res);
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    throw_db(env, "PostgreSQL", res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
    goto done;
  }
  int nrows = PQntuples(res), ncols = PQnfields(res);
  jobjectArray rows = new_rows(env, nrows);
  if (rows == NULL) goto done;
  for (int r = 0; r < nrows; r++) {
    jobjectArray row = new_row(env, ncols);
    if (row == NULL) goto done;
    for (int c = 0; c < ncols; c++) {
      if (PQgetisnull(res, r, c)) continue;
      jbyteArray cell = jbytes(env, PQgetvalue(res, r, c), (size_t)PQgetlength(res, r, c));
      if (cell == NULL) goto done;
      (*env)->SetObjectArrayElement(env, row, c, cell);
      (*env)->DeleteLocalRef(env, cell);
    }
    (*env)->SetObjectArrayElement(env, rows, r, row);
    (*env)->DeleteLocalRef(env, row);
  }
  result = rows;
done:
  if (res != NULL) PQclear(res);
  if (conn != NULL) PQfinish(conn);
  free_cstrings(params, nparams);
  free(sql);
  free(conninfo);
  return result;
}
