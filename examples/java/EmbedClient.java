/*
 * Send raw strings to a packager model served by Triton (HTTP/REST, KServe v2 JSON, BYTES input)
 * or by TF-Serving (REST, "instances"), and print one embedding per input as a JSON array per line;
 * for a reranker, score documents against one query (one JSON array of scores per document).
 *
 * Only the JDK is used (java.net.http, Java 11+; tested with javac 17): no Maven, no JSON library.
 *
 *   javac -d out EmbedClient.java
 *   java -cp out EmbedClient triton    http://127.0.0.1:8000 all-minilm-l6-v2 "Hello world" "Café 中文"
 *   java -cp out EmbedClient tfserving http://127.0.0.1:8501 all-minilm-l6-v2 "Hello world"
 *   java -cp out EmbedClient triton    http://127.0.0.1:8000 all-minilm-l6-v2 --jsonl texts.jsonl --batch 16
 *   java -cp out EmbedClient triton    http://127.0.0.1:8000 e5-small --prompt query "how do I reset it?"
 *   java -cp out EmbedClient triton    http://127.0.0.1:8000 ms-marco --rerank "what is tf?" "TensorFlow is ..." "A cat."
 *
 * --jsonl FILE reads one JSON string per line (so newlines, tabs and any Unicode can be sent).
 * --prompt NAME applies one of the model's prompts (sent as the optional prompt_name input).
 * --rerank QUERY sends (QUERY, text) pairs to a reranker and prints its scores.
 * Exit code: 0 on success, 1 when the server refuses a request (its message goes to stderr), 2 on bad usage.
 */

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public final class EmbedClient {
    static final String INPUT = "input_sequence";
    static final String OUTPUT = "sentence_embedding";
    static final String QUERY = "query";
    static final String DOCUMENT = "document";
    static final String SCORES = "scores";
    static final String PROMPT = "prompt_name";

    private final HttpClient http;
    private final String kind;
    private final String baseUrl;
    private final String model;

    EmbedClient(String kind, String baseUrl, String model) {
        this.kind = kind;
        this.baseUrl = baseUrl.endsWith("/") ? baseUrl.substring(0, baseUrl.length() - 1) : baseUrl;
        this.model = model;
        // HTTP/1.1: both servers speak it; the JDK's default h2c upgrade attempt only adds a round trip.
        this.http = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(10))
                .build();
    }

    /** Embeds a batch of strings: one float[] per input, in order (prompt: a prompt name, or null). */
    List<float[]> embed(List<String> texts, String prompt) throws IOException, InterruptedException {
        Map<String, List<String>> inputs = new LinkedHashMap<>();
        inputs.put(INPUT, texts);
        return infer(inputs, prompt, OUTPUT);
    }

    /** Scores (query, document) pairs with a reranker: one float[] of scores per document. */
    List<float[]> rerank(String query, List<String> documents, String prompt) throws IOException, InterruptedException {
        Map<String, List<String>> inputs = new LinkedHashMap<>();
        inputs.put(QUERY, java.util.Collections.nCopies(documents.size(), query));
        inputs.put(DOCUMENT, documents);
        return infer(inputs, prompt, SCORES);
    }

    List<float[]> infer(Map<String, List<String>> inputs, String prompt, String output)
            throws IOException, InterruptedException {
        int n = inputs.values().iterator().next().size();
        if (prompt != null) {
            inputs = new LinkedHashMap<>(inputs);
            inputs.put(PROMPT, java.util.Collections.nCopies(n, prompt));
        }
        String url;
        StringBuilder body = new StringBuilder();
        if (kind.equals("triton")) {
            // KServe v2: one BYTES tensor of shape [batch, 1] per input; JSON strings carry the UTF-8 text.
            url = baseUrl + "/v2/models/" + model + "/infer";
            body.append("{\"inputs\":[");
            boolean first = true;
            for (Map.Entry<String, List<String>> e : inputs.entrySet()) {
                if (!first) body.append(',');
                first = false;
                body.append("{\"name\":\"").append(e.getKey()).append("\",\"shape\":[")
                    .append(e.getValue().size()).append(",1],\"datatype\":\"BYTES\",\"data\":[");
                appendStrings(body, e.getValue());
                body.append("]}");
            }
            body.append("],\"outputs\":[{\"name\":\"").append(output).append("\"}]}");
        } else {
            // TF-Serving: the with_prompt signature takes the prompt name; several inputs go as objects per row.
            url = baseUrl + "/v1/models/" + model + ":predict";
            body.append("{\"signature_name\":\"").append(prompt != null ? "with_prompt" : "serving_default")
                .append("\",\"instances\":[");
            if (inputs.size() == 1) {
                appendStrings(body, inputs.values().iterator().next());
            } else {
                for (int i = 0; i < n; i++) {
                    if (i > 0) body.append(',');
                    body.append('{');
                    boolean first = true;
                    for (Map.Entry<String, List<String>> e : inputs.entrySet()) {
                        if (!first) body.append(',');
                        first = false;
                        Json.quote(body, e.getKey());
                        body.append(':');
                        Json.quote(body, e.getValue().get(i));
                    }
                    body.append('}');
                }
            }
            body.append("]}");
        }
        HttpRequest request = HttpRequest.newBuilder(URI.create(url))
                .timeout(Duration.ofSeconds(120))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body.toString(), StandardCharsets.UTF_8))
                .build();
        HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
        if (response.statusCode() != 200) {
            throw new ServerException(response.statusCode(), response.body());
        }
        Object parsed = new Json(response.body()).parse();
        return kind.equals("triton") ? fromTriton(parsed, n, output) : fromTfServing(parsed, output);
    }

    @SuppressWarnings("unchecked")
    static List<float[]> fromTriton(Object parsed, int n, String output) {
        Map<String, Object> root = (Map<String, Object>) parsed;
        for (Object o : (List<Object>) root.get("outputs")) {
            Map<String, Object> out = (Map<String, Object>) o;
            if (!output.equals(out.get("name"))) continue;
            List<Object> shape = (List<Object>) out.get("shape");
            List<Object> data = (List<Object>) out.get("data");
            int dim = ((Number) shape.get(shape.size() - 1)).intValue();
            if (data.size() != n * dim) throw new IllegalStateException("expected " + n * dim + " values, got " + data.size());
            List<float[]> rows = new ArrayList<>(n);
            for (int i = 0; i < n; i++) {
                float[] row = new float[dim];
                for (int j = 0; j < dim; j++) row[j] = ((Number) data.get(i * dim + j)).floatValue();
                rows.add(row);
            }
            return rows;
        }
        throw new IllegalStateException("no output named " + output);
    }

    @SuppressWarnings("unchecked")
    static List<float[]> fromTfServing(Object parsed, String output) {
        List<Object> predictions = (List<Object>) ((Map<String, Object>) parsed).get("predictions");
        List<float[]> rows = new ArrayList<>(predictions.size());
        for (Object p : predictions) {
            Object vec = p instanceof Map ? ((Map<String, Object>) p).get(output) : p;
            List<Object> values = (List<Object>) vec;
            float[] row = new float[values.size()];
            for (int j = 0; j < row.length; j++) row[j] = ((Number) values.get(j)).floatValue();
            rows.add(row);
        }
        return rows;
    }

    static void appendStrings(StringBuilder sb, List<String> texts) {
        for (int i = 0; i < texts.size(); i++) {
            if (i > 0) sb.append(',');
            Json.quote(sb, texts.get(i));
        }
    }

    static final class ServerException extends IOException {
        private static final long serialVersionUID = 1L;
        final int status;

        ServerException(int status, String body) {
            super("HTTP " + status + ": " + body);
            this.status = status;
        }
    }

    /** A small JSON reader and string quoter: enough for requests and responses of both servers. */
    static final class Json {
        private final String s;
        private int i;

        Json(String s) {
            this.s = s;
        }

        static void quote(StringBuilder sb, String text) {
            sb.append('"');
            for (int k = 0; k < text.length(); k++) {
                char c = text.charAt(k);
                switch (c) {
                    case '"': sb.append("\\\""); break;
                    case '\\': sb.append("\\\\"); break;
                    case '\n': sb.append("\\n"); break;
                    case '\r': sb.append("\\r"); break;
                    case '\t': sb.append("\\t"); break;
                    default:
                        // Control characters must be escaped; everything else travels as UTF-8.
                        if (c < 0x20 || c == 0x7f || c == '\u2028' || c == '\u2029') sb.append(String.format("\\u%04x", (int) c));
                        else sb.append(c);
                }
            }
            sb.append('"');
        }

        Object parse() {
            Object v = value();
            ws();
            if (i != s.length()) throw error("trailing data");
            return v;
        }

        private Object value() {
            ws();
            if (i >= s.length()) throw error("unexpected end");
            char c = s.charAt(i);
            switch (c) {
                case '{': return object();
                case '[': return array();
                case '"': return string();
                case 't': expect("true"); return Boolean.TRUE;
                case 'f': expect("false"); return Boolean.FALSE;
                case 'n': expect("null"); return null;
                default: return number();
            }
        }

        private Map<String, Object> object() {
            Map<String, Object> m = new LinkedHashMap<>();
            i++;
            ws();
            if (peek() == '}') { i++; return m; }
            while (true) {
                ws();
                String key = string();
                ws();
                if (s.charAt(i++) != ':') throw error("expected ':'");
                m.put(key, value());
                ws();
                char c = s.charAt(i++);
                if (c == '}') return m;
                if (c != ',') throw error("expected ',' or '}'");
            }
        }

        private List<Object> array() {
            List<Object> a = new ArrayList<>();
            i++;
            ws();
            if (peek() == ']') { i++; return a; }
            while (true) {
                a.add(value());
                ws();
                char c = s.charAt(i++);
                if (c == ']') return a;
                if (c != ',') throw error("expected ',' or ']'");
            }
        }

        private String string() {
            if (s.charAt(i) != '"') throw error("expected a string");
            i++;
            StringBuilder sb = new StringBuilder();
            while (true) {
                char c = s.charAt(i++);
                if (c == '"') return sb.toString();
                if (c != '\\') { sb.append(c); continue; }
                char e = s.charAt(i++);
                switch (e) {
                    case '"': sb.append('"'); break;
                    case '\\': sb.append('\\'); break;
                    case '/': sb.append('/'); break;
                    case 'b': sb.append('\b'); break;
                    case 'f': sb.append('\f'); break;
                    case 'n': sb.append('\n'); break;
                    case 'r': sb.append('\r'); break;
                    case 't': sb.append('\t'); break;
                    case 'u': sb.append((char) Integer.parseInt(s.substring(i, i + 4), 16)); i += 4; break;
                    default: throw error("bad escape \\" + e);
                }
            }
        }

        private Number number() {
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) i++;
            if (start == i) throw error("unexpected character '" + s.charAt(i) + "'");
            return Double.parseDouble(s.substring(start, i));
        }

        private void expect(String word) {
            if (!s.startsWith(word, i)) throw error("expected " + word);
            i += word.length();
        }

        private char peek() {
            return i < s.length() ? s.charAt(i) : '\0';
        }

        private void ws() {
            while (i < s.length() && Character.isWhitespace(s.charAt(i))) i++;
        }

        private IllegalArgumentException error(String what) {
            return new IllegalArgumentException("JSON: " + what + " at offset " + i);
        }
    }

    static String usage() {
        return "usage: EmbedClient triton|tfserving BASE_URL MODEL [--batch N] [--jsonl FILE] [--prompt NAME] "
                + "[--rerank QUERY] [TEXT ...]";
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 3 || !(args[0].equals("triton") || args[0].equals("tfserving"))) {
            System.err.println(usage());
            System.exit(2);
        }
        List<String> texts = new ArrayList<>();
        int batch = 32;
        String prompt = null;
        String query = null;
        for (int k = 3; k < args.length; k++) {
            if (args[k].equals("--prompt") && k + 1 < args.length) {
                prompt = args[++k];
            } else if (args[k].equals("--rerank") && k + 1 < args.length) {
                query = args[++k];
            } else if (args[k].equals("--batch") && k + 1 < args.length) {
                batch = Integer.parseInt(args[++k]);
            } else if (args[k].equals("--jsonl") && k + 1 < args.length) {
                for (String line : Files.readAllLines(Path.of(args[++k]), StandardCharsets.UTF_8)) {
                    if (!line.isBlank()) texts.add((String) new Json(line).parse());
                }
            } else {
                texts.add(args[k]);
            }
        }
        if (texts.isEmpty()) {
            System.err.println("no text given\n" + usage());
            System.exit(2);
        }
        EmbedClient client = new EmbedClient(args[0], args[1], args[2]);
        StringBuilder out = new StringBuilder();
        try {
            for (int start = 0; start < texts.size(); start += batch) {
                List<String> chunk = texts.subList(start, Math.min(texts.size(), start + batch));
                List<float[]> rows = query != null ? client.rerank(query, chunk, prompt) : client.embed(chunk, prompt);
                for (float[] row : rows) {
                    out.setLength(0);
                    out.append('[');
                    for (int j = 0; j < row.length; j++) {
                        if (j > 0) out.append(',');
                        out.append(Float.toString(row[j]));  // shortest text that reads back as the same float
                    }
                    out.append(']');
                    System.out.println(out);
                }
            }
        } catch (ServerException e) {
            System.err.println("server refused the request: " + e.getMessage());
            System.exit(1);
        }
    }
}
