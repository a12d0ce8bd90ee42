using System.Text;

namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>
/// Reads a SentencePiece <c>tokenizer.model</c> (protobuf ModelProto) of model type BPE into the same pipeline
/// Hugging Face's LlamaTokenizerFast converts it to: normalizer Prepend "▁" (dummy prefix; with <c>legacy</c> false a
/// Metaspace pre-tokenizer that prepends only at the start of the text) and Replace " " → "▁", the BPE with byte
/// fallback, the pieces of type CONTROL, UNKNOWN and USER_DEFINED as added tokens, and the decoder Replace "▁" → " ",
/// ByteFallback, Fuse, Strip one leading space. The merges are every pair of pieces whose concatenation is a piece,
/// ranked by that piece's score; equal scores merge leftmost first, as sentencepiece does (Microsoft.ML.Tokenizers
/// 2.0.1 merges equal scores from the right, which gives other ids; see README, Known limits).
/// </summary>
internal static class SentencePieceReader
{
    const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Byte = 6;

    /// <summary>Reads the model; <paramref name="bosId"/> and <paramref name="eosId"/> are trainer_spec's bos_id and eos_id (null when negative or out of range).</summary>
    public static HfTokenizer Read(string path, bool legacy, out int? bosId, out int? eosId)
    {
        long bos = 1, eos = 2;
        byte[] data = File.ReadAllBytes(path);
        var pieces = new List<(string Piece, float Score, int Type)>();
        int modelType = 1;
        bool byteFallback = false, addDummyPrefix = true, removeExtraWhitespaces = true, escapeWhitespaces = true;
        string normalizerName = "nmt_nfkc";
        bool hasCharsMap = false;
        try
        {
            var top = new ProtoReader(data, 0, data.Length);
            while (top.Next(out int field, out int wire))
            {
                if (field == 1 && wire == 2)
                {
                    var p = top.Sub();
                    string piece = ""; float score = 0; int type = Normal;
                    while (p.Next(out int f, out int w))
                    {
                        if (f == 1 && w == 2) piece = p.String();
                        else if (f == 2 && w == 5) score = p.Fixed32();
                        else if (f == 3 && w == 0) type = (int)p.Varint();
                        else p.Skip(w);
                    }
                    pieces.Add((piece, score, type));
                }
                else if (field == 2 && wire == 2)
                {
                    var t = top.Sub();
                    while (t.Next(out int f, out int w))
                    {
                        if (f == 3 && w == 0) modelType = (int)t.Varint();
                        else if (f == 35 && w == 0) byteFallback = t.Varint() != 0;
                        else if (f == 41 && w == 0) bos = (long)t.Varint();
                        else if (f == 42 && w == 0) eos = (long)t.Varint();
                        else t.Skip(w);
                    }
                }
                else if (field == 3 && wire == 2)
                {
                    var n = top.Sub();
                    while (n.Next(out int f, out int w))
                    {
                        if (f == 1 && w == 2) normalizerName = n.String();
                        else if (f == 2 && w == 2) hasCharsMap = n.Sub().Length > 0;
                        else if (f == 3 && w == 0) addDummyPrefix = n.Varint() != 0;
                        else if (f == 4 && w == 0) removeExtraWhitespaces = n.Varint() != 0;
                        else if (f == 5 && w == 0) escapeWhitespaces = n.Varint() != 0;
                        else n.Skip(w);
                    }
                }
                else top.Skip(wire);
            }
        }
        catch (Exception e) when (e is IndexOutOfRangeException or ArgumentOutOfRangeException or DecoderFallbackException or InvalidDataException)
        {
            throw new InvalidDataException($"{path}: not a SentencePiece model (protobuf ModelProto): {e.Message}", e);
        }
        if (pieces.Count == 0) throw new InvalidDataException($"{path}: not a SentencePiece model: no pieces.");
        // protobuf writes negative int32 values as 64-bit two's complement varints: -1 (no such token) arrives as a huge number.
        bosId = bos >= 0 && bos < pieces.Count ? (int)bos : null;
        eosId = eos >= 0 && eos < pieces.Count ? (int)eos : null;
        if (modelType != 2)
            throw new NotSupportedException($"{path}: trainer_spec.model_type {(modelType == 1 ? "UNIGRAM" : modelType.ToString(System.Globalization.CultureInfo.InvariantCulture))} is not supported (only BPE SentencePiece models load); add the model's tokenizer.json to the directory.");
        if (hasCharsMap || (normalizerName != "identity" && normalizerName != ""))
            throw new NotSupportedException($"{path}: normalizer_spec \"{normalizerName}\" (a precompiled normalization map) is not supported; add the model's tokenizer.json to the directory.");
        if (removeExtraWhitespaces)
            throw new NotSupportedException($"{path}: normalizer_spec.remove_extra_whitespaces is not supported; add the model's tokenizer.json to the directory.");
        if (!escapeWhitespaces)
            throw new NotSupportedException($"{path}: normalizer_spec.escape_whitespaces false is not supported; add the model's tokenizer.json to the directory.");

        var vocab = new Dictionary<string, int>(pieces.Count, StringComparer.Ordinal);
        var added = new List<AddedToken>();
        int? unk = null;
        for (int id = 0; id < pieces.Count; id++)
        {
            var (piece, _, type) = pieces[id];
            vocab.TryAdd(piece, id);
            if (type == Unknown) unk ??= id;
            if (type is Unknown or Control) added.Add(new AddedToken(id, piece, true, false, false, false, false));
            else if (type == UserDefined) added.Add(new AddedToken(id, piece, false, false, false, false, false));
        }
        // Merges: every split of a NORMAL piece into two pieces; rank = the piece's score rank (higher score first, equal scores share a rank).
        var ranks = pieces.Where(p => p.Type == Normal).Select(p => p.Score).Distinct().OrderByDescending(s => s).Select((s, i) => (s, i)).ToDictionary(x => x.s, x => x.i);
        var merges = new Dictionary<long, (int, int)>();
        for (int id = 0; id < pieces.Count; id++)
        {
            var (piece, score, type) = pieces[id];
            if (type != Normal || piece.Length < 2) continue;
            for (int cut = 1; cut < piece.Length; cut++)
            {
                if (char.IsLowSurrogate(piece[cut])) continue;
                if (vocab.TryGetValue(piece[..cut], out int a) && vocab.TryGetValue(piece[cut..], out int b) && IsMergeable(pieces[a].Type) && IsMergeable(pieces[b].Type))
                    merges.TryAdd(BpeModel.Key(a, b), (ranks[score], id));
            }
        }
        var model = new BpeModel(vocab, merges, unk, fuseUnk: true, byteFallback, ignoreMerges: false);
        Normalizer? normalizer;
        PreTokenizer? pre = null;
        if (legacy)
            normalizer = addDummyPrefix ? new SequenceNormalizer([new PrependNormalizer("▁"), new ReplaceNormalizer(TextPattern.Literal(" "), "▁")]) : new ReplaceNormalizer(TextPattern.Literal(" "), "▁");
        else
        {
            normalizer = null;
            pre = new MetaspacePreTokenizer("▁", addDummyPrefix ? "first" : "never", split: false);
        }
        var decoders = new List<Decoder> { new ReplaceDecoder(TextPattern.Literal("▁"), " ") };
        if (byteFallback) decoders.Add(new ByteFallbackDecoder());
        decoders.Add(new FuseDecoder());
        if (addDummyPrefix) decoders.Add(new StripDecoder(' ', 1, 0));
        return new HfTokenizer(model, normalizer, pre, null, new SequenceDecoder(decoders), added);

        static bool IsMergeable(int type) => type is Normal or UserDefined or Byte;
    }

    /// <summary>A minimal protobuf reader: fields, varints, fixed32, length-delimited sub-messages.</summary>
    sealed class ProtoReader(byte[] data, int begin, int end)
    {
        int _at = begin;
        readonly int _begin = begin;
        public int Length => end - _begin;

        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (_at >= end) return false;
            ulong key = Varint();
            field = (int)(key >> 3);
            wire = (int)(key & 7);
            return true;
        }

        public ulong Varint()
        {
            ulong value = 0;
            for (int shift = 0; ; shift += 7)
            {
                if (_at >= end || shift > 63) throw new InvalidDataException("truncated varint");
                byte b = data[_at++];
                value |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return value;
            }
        }

        public float Fixed32()
        {
            if (_at + 4 > end) throw new InvalidDataException("truncated fixed32");
            float f = BitConverter.ToSingle(data, _at);
            _at += 4;
            return f;
        }

        public ProtoReader Sub()
        {
            ulong len = Varint();
            if (len > (ulong)(end - _at)) throw new InvalidDataException("a length-delimited field runs past the end");
            var sub = new ProtoReader(data, _at, _at + (int)len);
            _at += (int)len;
            return sub;
        }

        public string String()
        {
            var sub = Sub();
            return new UTF8Encoding(false, true).GetString(data, sub._at, sub.Length);
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: _at += 8; break;
                case 2: Sub(); break;
                case 5: _at += 4; break;
                default: throw new InvalidDataException($"unknown wire type {wire}");
            }
            if (_at > end) throw new InvalidDataException("truncated field");
        }
    }
}
